"""Every exchange the gateway handles, kept in LanceDB's `exchanges` table, off the request path.

What a row holds: the request as the client sent it (protocol, path, model name, system, Anthropic-shaped
turns, parameters), the answer (first choice's text, every choice's blocks), who answered and why
(decision, reason, signal, confidence, threshold, category or "none"), tokens, latency, the client
(User-Agent and X-QEForge-Caller; no other header, so never Authorization or x-api-key), a timestamp and
an id. Declined calls (503) are rows too: decision `declined`, no answer.

The request only queues its objects (`record`, non-blocking). One thread turns them into rows, redacts
every text field (`DEFAULT_REDACT_PATTERNS` or the configured ones, matches become [REDACTED]) and
appends up to `batch_rows` rows per LanceDB commit, at least every `flush_s`. A full queue drops the
exchange and counts it (`dropped`; qeforge_exchanges_dropped_total in /metrics): a slow store never
slows an answer. `close` flushes what is queued. Each append is one Lance commit: the data files are
written first and the new table version is published atomically after them, so a process killed
mid-write loses what was not yet appended (about `flush_s` of traffic while the store keeps up; at
most the queue plus the batch in hand) and leaves the table at its previous version, readable, with
at most orphaned data files that no version references.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from qeforge import store
from qeforge.serving.chat import ChatCall, Completion
from qeforge.serving.engine import Declined

log = logging.getLogger(__name__)

EXCHANGES, FEEDBACK = store.EXCHANGES, store.FEEDBACK
CALLER_HEADER = "x-qeforge-caller"  # optional: which agent or job of the fleet sent the call
REDACTED = "[REDACTED]"
DEFAULT_REDACT_PATTERNS = (
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-api03-...) keys
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/-]+=*",  # bearer tokens pasted into a prompt
    r"(?i:\b(?:password|passwd|pwd)\s*[=:]\s*)[^\s\"',;]+",  # password=..., pwd: ...
)
# 256 queued exchanges: the fleet's prompts are 1-20 KB, so ~5 MB held at most; at the 4 MiB body
# limit it is 1 GiB, the worst case the bound exists for. The writer appends 64 rows per commit, and
# a local commit takes tens of ms, so the queue fills only when the store stalls.
DEFAULT_MAX_QUEUE = 256
DEFAULT_BATCH_ROWS = 64
DEFAULT_FLUSH_S = 1.0

OUTCOMES = ("success", "failure")
# What the fleet says about an answer after using it (POST /v1/feedback): append-only, the latest row per
# exchange counts. Curation reads it: a failure keeps a Claude answer out of training, a success lets a
# local answer in (qeforge/curation/exchanges.py).
FEEDBACK_SCHEMA = pa.schema([
    pa.field("exchange_id", pa.string(), nullable=False),
    pa.field("outcome", pa.string(), nullable=False),  # success | failure
    pa.field("quality", pa.float64()),  # 0..1 when the fleet scored the answer; null otherwise
    pa.field("source", pa.string()),  # who reported it, e.g. the agent or "agentic-qe"
    pa.field("received_at", pa.timestamp("us", tz="UTC")),
])

EXCHANGE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("received_at", pa.timestamp("us", tz="UTC")),
    pa.field("latency_s", pa.float64()),
    pa.field("status", pa.int32()),  # 200, or 503 for a declined call
    pa.field("protocol", pa.string()),  # openai | anthropic | ollama
    pa.field("path", pa.string()),
    pa.field("model", pa.string()),  # as the client named it
    pa.field("system", pa.string()),
    pa.field("messages", pa.string()),  # JSON: Anthropic Messages turns (chat.ChatCall)
    pa.field("parameters", pa.string()),  # JSON: max_tokens, temperature, stop, tools, json_output, ...
    pa.field("decision", pa.string()),  # local | escalated | local_fallback | declined
    pa.field("reason", pa.string()),
    pa.field("category", pa.string()),  # one of the four, or "none"
    pa.field("answered_by", pa.string()),  # qeforge-<category>@<version> or the Claude model; null when declined
    pa.field("adapter_version", pa.string()),
    pa.field("policy_version", pa.string()),
    pa.field("signal", pa.string()),
    pa.field("confidence", pa.float64()),
    pa.field("threshold", pa.float64()),
    pa.field("answer", pa.string()),  # the first choice's text; null when declined
    pa.field("choices", pa.string()),  # JSON: every choice's blocks (text, tool_use, ...) and finish
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("escalation_error", pa.string()),
    pa.field("timings", pa.string()),  # JSON: routing_s, queue_s, generate_s, escalation_s, engine_s
    pa.field("user_agent", pa.string()),
    pa.field("caller", pa.string()),
])
PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice", "thinking", "n", "json_output",
              "category", "stream")


@dataclass
class Exchange:
    """One handled call as the gateway saw it; queued as is, made a row by the writer thread."""

    call: ChatCall
    completion: Completion | None  # None: declined
    path: str
    user_agent: str | None
    caller: str | None
    received_at: float  # time.time() when the call arrived
    latency_s: float
    declined: Declined | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the client sees it (qeforge.exchange_id) to send feedback


class Redactor:
    """Every match of any pattern, in every string of a value (dicts and lists walked), as [REDACTED]."""

    def __init__(self, patterns=DEFAULT_REDACT_PATTERNS):
        self.patterns = []
        for p in patterns:  # a bad pattern fails at startup (as the ValueError `qeforge serve` reports), not per row
            try:
                self.patterns.append(re.compile(p))
            except re.error as err:
                raise ValueError(f"redact pattern {p!r}: {err}") from None

    def __call__(self, value):
        if isinstance(value, str):
            for p in self.patterns:
                value = p.sub(REDACTED, value)
            return value
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def exchange_row(e: Exchange, redact: Redactor) -> dict:
    """The table row: structured fields redacted, then stored as JSON text."""
    c, call = e.completion, e.call
    route = c.route() if c else {"decision": "declined", "reason": e.declined.reason, "category": e.declined.category}
    text = {"system": call.system_text(), "messages": call.messages, "model": call.model, "user_agent": e.user_agent,
            "caller": e.caller, "parameters": {k: getattr(call, k) for k in PARAMETERS},
            "answer": c.text if c else None, "escalation_error": (c or e.declined).escalation_error,
            "choices": [{"blocks": ch.blocks, "finish": ch.finish} for ch in c.choices] if c else None}
    text = {k: redact(v) for k, v in text.items()}
    for k in ("messages", "parameters", "choices"):
        text[k] = json.dumps(text[k], ensure_ascii=False) if text[k] is not None else None
    return {
        "id": e.id, "received_at": datetime.fromtimestamp(e.received_at, timezone.utc),
        "latency_s": e.latency_s, "status": 200 if c else 503, "protocol": call.protocol, "path": e.path, **text,
        "decision": route["decision"], "reason": route["reason"], "category": route["category"],
        "answered_by": c.answered_by if c else None, "adapter_version": c.adapter_version if c else None,
        "policy_version": c.policy_version if c else None, "signal": c.signal if c else None,
        "confidence": c.confidence if c else None, "threshold": c.threshold if c else None,
        "prompt_tokens": c.prompt_tokens if c else None, "completion_tokens": c.completion_tokens if c else None,
        "timings": json.dumps(c.timings if c else {}),
    }


_STOP = object()


class Recorder:
    """Queue exchanges (`record`), append them to `db`'s `table` in a background thread, `close` to flush.
    enabled=False records nothing and touches no table."""

    def __init__(self, db, *, enabled: bool = True, redact_patterns=DEFAULT_REDACT_PATTERNS, table: str = EXCHANGES,
                 max_queue: int = DEFAULT_MAX_QUEUE, batch_rows: int = DEFAULT_BATCH_ROWS, flush_s: float = DEFAULT_FLUSH_S):
        self.enabled, self.batch_rows, self.flush_s, self.db = enabled, batch_rows, flush_s, db
        self.redact = Redactor(redact_patterns)
        self.dropped = 0  # exchanges lost: the queue was full, or their append failed
        self._count_lock = threading.Lock()
        if not enabled:
            return
        if db is None:
            raise ValueError("recording exchanges needs a LanceDB connection")
        self.table = store.open_table(db, table, EXCHANGE_SCHEMA)
        self.queue: queue.Queue = queue.Queue(max_queue)
        self.thread = threading.Thread(target=self._write_loop, name="exchange-recorder", daemon=True)
        self.thread.start()

    def record(self, exchange: Exchange) -> bool:
        """Queue it without waiting; False when recording is off or the queue is full (counted as dropped)."""
        if not self.enabled:
            return False
        try:
            self.queue.put_nowait(exchange)
            return True
        except queue.Full:
            self._drop(1)
            return False

    def close(self, timeout_s: float = 30) -> None:
        """Append what is queued, then stop the writer."""
        if self.enabled and self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join(timeout_s)

    def _drop(self, n: int) -> None:
        with self._count_lock:
            self.dropped += n

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self.queue.get()]  # wait for the first; then up to flush_s for company
            deadline = time.monotonic() + self.flush_s
            while len(batch) < self.batch_rows and batch[-1] is not _STOP:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stopping = batch[-1] is _STOP
            self._append([e for e in batch if e is not _STOP])

    def _append(self, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        try:
            rows = [exchange_row(e, self.redact) for e in exchanges]
            self.table.add(pa.Table.from_pylist(rows, schema=EXCHANGE_SCHEMA))
        except Exception:  # a store that fails loses these rows, never the gateway
            log.exception("could not record %d exchanges", len(exchanges))
            self._drop(len(exchanges))


def feedback_row(data: dict) -> dict:
    """A POST /v1/feedback body as a FEEDBACK_SCHEMA row; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    exchange_id, outcome, quality, source = (data.get(k) for k in ("exchange_id", "outcome", "quality", "source"))
    if not isinstance(exchange_id, str) or not re.fullmatch(r"[0-9a-f]{32}", exchange_id):
        raise ValueError("exchange_id: the 32-hex id an answer carried in qeforge.exchange_id (or X-QEForge-Route)")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: one of {list(OUTCOMES)}")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int | float) or not 0 <= quality <= 1):
        raise ValueError("quality: a number in [0, 1], or absent")
    if source is not None and (not isinstance(source, str) or len(source) > 200):
        raise ValueError("source: a string of at most 200 characters, or absent")
    return {"exchange_id": exchange_id, "outcome": outcome, "quality": None if quality is None else float(quality),
            "source": source, "received_at": datetime.now(timezone.utc)}


def record_feedback(db, row: dict) -> None:
    """One feedback row, appended now: small and rare, so not worth the recorder's queue."""
    store.open_table(db, FEEDBACK, FEEDBACK_SCHEMA).add(pa.Table.from_pylist([row], schema=FEEDBACK_SCHEMA))
