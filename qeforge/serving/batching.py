"""One generation thread that batches the waiting requests, each row with its own adapter.

Why one thread: peft applies `adapter_names=` by registering forward hooks on the shared LoRA layers
for the duration of a call, so concurrent calls from several threads see each other's hooks (the
mix-ups measured before this engine: 5 of 20). Here only this thread calls the model.

The loop: take the oldest request, wait up to `max_wait_s` for the requests already inside the shim
(counted by `arriving()`, so a lone request never waits), up to `max_batch` rows; left-pad them;
prefill; then one forward per step for all rows still running, greedy. A row leaves the batch when
it emits a stop token, reaches its max_tokens, its text contains one of its stop strings, or its
client disconnected; its caller gets the answer at once, the others go on. A request that arrives
meanwhile waits for the next batch (static batching: KV caches of different lengths are not merged).

Cost, SmolLM2-135M on 2 cores: a step for 16 rows costs about 2x a step for one row (the weights are
read once per step for all rows), so 16 concurrent answers take ~2x the time of one, not 16x.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qeforge import signals

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_S = 0.01


class Cancelled(Exception):
    """The request's client went away; its row was dropped."""


class Backend(Protocol):
    mixes_adapters: bool  # False: one batch holds one category's rows only

    def forward(self, categories: list[str], ids: np.ndarray, mask: np.ndarray, past):
        """(last-position logits [rows, vocab], cache) for ids [rows, new] after `past` (None: empty)."""

    def select(self, past, rows: list[int]):
        """The cache of these rows only."""


@dataclass(eq=False)  # compared by identity: two identical prompts are two requests
class GenerationRequest:
    category: str
    ids: list[int]
    max_new: int
    stop_texts: tuple[str, ...]
    state: object  # backend, tokenizer, stops, pad_id: the snapshot the request runs on
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass
class Generated:
    tokens: list[int]
    text: str
    mean_logprob: float
    finish_reason: str  # "stop" | "length"
    queue_s: float  # submitted -> its batch started
    generate_s: float  # its batch started -> its answer was ready
    batch_rows: int  # rows in its batch when it started


class Batcher:
    def __init__(self, *, max_batch: int = DEFAULT_MAX_BATCH, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[GenerationRequest] = queue.Queue()
        self._backlog: list[GenerationRequest] = []  # taken from the queue, not yet in a batch
        self._arriving = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="qeforge-generation", daemon=True).start()

    @contextlib.contextmanager
    def arriving(self):
        """Around a request's work before submit (routing, tokenizing): the loop may wait for it."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in a batch (the queue depth)."""
        return self._queue.qsize() + len(self._backlog)

    def submit(self, request: GenerationRequest) -> Future:
        self._queue.put(request)
        return request.future

    # -- the generation thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._collect()
            try:
                self._run(batch)
            except Exception as err:  # the thread must outlive any one batch
                log.exception("generation failed for a batch of %d", len(batch))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)

    def _drain(self, timeout: float | None) -> None:
        try:
            self._backlog.append(self._queue.get(timeout=timeout))
            while True:
                self._backlog.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _collect(self) -> list[GenerationRequest]:
        while not self._backlog:
            self._drain(None)
        first = self._backlog[0]
        joins = lambda r: r.state is first.state and (first.state.backend.mixes_adapters or r.category == first.category)  # noqa: E731
        deadline = time.perf_counter() + self.max_wait_s
        while self.max_batch > 1 and sum(map(joins, self._backlog)) < self.max_batch:
            with self._lock:
                waiting_for = self._arriving
            left = deadline - time.perf_counter()
            if not waiting_for or left <= 0:
                break
            self._drain(min(left, 0.001))
        batch = [r for r in self._backlog if joins(r)][: self.max_batch]
        self._backlog = [r for r in self._backlog if r not in batch]
        return batch

    def _run(self, batch: list[GenerationRequest]) -> None:
        started = time.perf_counter()
        rows = []
        for r in batch:
            if r.cancelled.is_set():
                r.future.set_exception(Cancelled())
            else:
                rows.append(r)
        if not rows:
            return
        state = rows[0].state
        width = max(len(r.ids) for r in rows)
        ids = np.full((len(rows), width), state.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[i, width - len(r.ids):], mask[i, width - len(r.ids):] = r.ids, 1
        logits, past = state.backend.forward([r.category for r in rows], ids, mask, None)
        n_rows = len(rows)
        while rows:
            tokens = logits.argmax(-1)
            logprobs = signals.token_logprobs(logits, tokens)
            keep = []
            for i, r in enumerate(rows):
                r.tokens.append(int(tokens[i]))
                r.logprobs.append(float(logprobs[i]))
                done = self._finished(r)
                if done:
                    self._answer(r, done, started, n_rows)
                elif r.cancelled.is_set():
                    r.future.set_exception(Cancelled())
                else:
                    keep.append(i)
            if not keep:
                return
            if len(keep) < len(rows):
                past, mask, tokens = state.backend.select(past, keep), mask[keep], tokens[keep]
                rows = [rows[i] for i in keep]
            mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
            logits, past = state.backend.forward([r.category for r in rows], tokens[:, None], mask, past)

    @staticmethod
    def _finished(r: GenerationRequest) -> tuple[str, str | None] | None:
        """(finish_reason, the text when a stop string cut it) once the row is done, else None."""
        if r.tokens[-1] in r.state.stops:
            return "stop", None
        if r.stop_texts:
            text = r.state.tokenizer.decode(r.tokens, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in r.stop_texts) if i >= 0), default=-1)
            if cut >= 0:  # OpenAI's `stop`: the answer ends before the stop string
                return "stop", text[:cut]
        if len(r.tokens) >= r.max_new:
            return "length", None
        return None

    @staticmethod
    def _answer(r: GenerationRequest, done: tuple[str, str | None], started: float, n_rows: int) -> None:
        reason, text = done
        if text is None:
            text = r.state.tokenizer.decode(r.tokens, skip_special_tokens=True)
        r.future.set_result(Generated(r.tokens, text.strip(), signals.mean_logprob(r.logprobs), reason,
                                      queue_s=started - r.submitted, generate_s=time.perf_counter() - started,
                                      batch_rows=n_rows))
