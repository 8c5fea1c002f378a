"""One generation thread that batches the waiting requests, each row with its own adapter.

Why one thread: peft applies `adapter_names=` by registering forward hooks on the shared LoRA layers
for the duration of a call, so concurrent calls from several threads see each other's hooks (the
mix-ups measured before this engine: 5 of 20). Here only this thread calls the model.

The loop (token-level continuous batching):
- idle: take the oldest request and wait up to `max_wait_s` for the requests already inside the shim
  (counted by `arriving()`, so a lone request never waits), up to `max_batch` rows;
- a batch runs one forward per step for all its rows, greedy, each row with its own adapter;
- between steps, requests that came meanwhile join it: prefilled (left-padded) on their own, then
  their KV caches are left-padded to the batch's length and stacked onto it;
- a row leaves at a stop token, its max_tokens, one of its stop strings, or when its client has
  disconnected; its caller gets the answer at once. Cache columns no remaining row uses are cut.
Fairness: a request that cannot join (ONNX: another category's graph; a reload's new snapshot)
stops admissions behind it, so the running batch drains and that request starts the next one.

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
from qeforge.serving.threads import claim_intra_op_threads

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_S = 0.01


class Cancelled(Exception):
    """The request's client went away; its row was dropped."""


class Backend(Protocol):
    mixes_adapters: bool  # False: one batch holds one category's rows only
    joins_running: bool  # False: requests wait for the running batch to end (static batching)

    def forward(self, categories: list[str], ids: np.ndarray, mask: np.ndarray, past):
        """(last-position logits [rows, vocab], cache) for ids [rows, new] after `past` (None: empty)."""

    def select(self, past, rows: list[int]):
        """The cache of these rows only."""

    def stack(self, a, b, pads: list[int]):
        """Cache a's rows then b's, each left-padded by its pad (zeros: masked out)."""

    def crop_left(self, past, n: int):
        """The cache without its first n positions."""


@dataclass(eq=False)  # compared by identity: two identical prompts are two requests
class GenerationRequest:
    category: str | None  # the adapter its rows run with; None: the base alone
    ids: list[int]
    max_new: int
    stop_texts: tuple[str, ...]
    state: object  # backend, tokenizer, stops, pad_id: the snapshot the request runs on
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # its prefill began
    batch_rows: int = 0  # rows in the batch at its first step
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass
class Generated:
    tokens: list[int]
    text: str
    mean_logprob: float
    finish_reason: str  # "stop" | "length"
    queue_s: float  # submitted -> its prefill began
    generate_s: float  # its prefill began -> its answer was ready
    batch_rows: int  # rows in the batch at its first step
    stop_text: str | None = None  # the stop string that ended it, if one did


class _Running:
    """A batch between steps: its rows, the logits of each row's next token, the KV cache and the mask."""

    def __init__(self, rows: list[GenerationRequest], logits, past, mask: np.ndarray):
        self.rows, self.logits, self.past, self.mask = rows, logits, past, mask
        self.state = rows[0].state

    def admits(self, r: GenerationRequest) -> bool:
        backend = self.state.backend
        return r.state is self.state and (backend.mixes_adapters or r.category == self.rows[0].category)


class Batcher:
    def __init__(self, *, max_batch: int = DEFAULT_MAX_BATCH, max_wait_s: float = DEFAULT_MAX_WAIT_S,
                 thread: bool = True, intra_op_threads: int | None = None):
        """thread=False: no generation thread; `run` generates a known set of requests (evaluation).
        intra_op_threads: the torch intra-op threads the generation thread claims (threads.py says why)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[GenerationRequest] = queue.Queue()
        self._backlog: list[GenerationRequest] = []  # taken from the queue, not yet in a batch
        self._arriving = 0
        self._lock = threading.Lock()
        self.intra_op_threads = intra_op_threads
        if thread:
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
        if self.intra_op_threads is not None:
            claim_intra_op_threads(self.intra_op_threads)
        running: _Running | None = None
        while True:
            running = self._turn(running)

    def run(self, requests: list[GenerationRequest]) -> None:
        """Generate these requests on the calling thread, batched as the shim batches; each future holds
        its answer (or its error) when this returns."""
        self._backlog += requests
        running: _Running | None = None
        while self._backlog or running is not None:
            running = self._turn(running)

    def _turn(self, running: _Running | None) -> _Running | None:
        """Admit what may join (or start a batch), then one step; the batch still running, or None."""
        taken: list[GenerationRequest] = []
        try:
            if running is None:
                taken = self._collect()
                running = self._prefill(taken)
            else:
                taken = self._joining(running)
                joined = self._prefill(taken)
                if joined is not None:
                    self._join(running, joined)
            if running is not None and not self._step(running):
                running = None
        except Exception as err:  # the thread must outlive any one batch
            rows = (running.rows if running else []) + taken
            log.exception("generation failed for a batch of %d", len(rows))
            for r in rows:
                if not r.future.done():
                    r.future.set_exception(err)
            running = None
        return running

    def _drain(self, timeout: float | None) -> None:
        """Move what is queued to the backlog; block up to `timeout` (None: forever, 0: not at all) for the first."""
        try:
            self._backlog.append(self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait())
            while True:
                self._backlog.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _take(self, admits, room: int) -> list[GenerationRequest]:
        """The oldest backlog requests that `admits`, up to `room`, stopping at the first that does not."""
        taken = []
        for r in self._backlog:
            if len(taken) == room or not admits(r):
                break
            taken.append(r)
        self._backlog = self._backlog[len(taken):]
        return taken

    def _collect(self) -> list[GenerationRequest]:
        while not self._backlog:
            self._drain(None)
        first = self._backlog[0]
        admits = lambda r: r.state is first.state and (first.state.backend.mixes_adapters or r.category == first.category)  # noqa: E731
        deadline = time.perf_counter() + self.max_wait_s
        while self.max_batch > 1 and sum(map(admits, self._backlog)) < self.max_batch:
            with self._lock:
                waiting_for = self._arriving
            left = deadline - time.perf_counter()
            if not waiting_for or left <= 0:
                break
            self._drain(min(left, 0.001))
        return self._take(admits, self.max_batch)

    def _joining(self, running: _Running) -> list[GenerationRequest]:
        if self.max_batch == 1 or not running.state.backend.joins_running:
            return []
        self._drain(0)
        return self._take(running.admits, self.max_batch - len(running.rows))

    def _prefill(self, requests: list[GenerationRequest]) -> _Running | None:
        rows = []
        for r in requests:
            if r.cancelled.is_set():
                r.future.set_exception(Cancelled())
            else:
                r.started = time.perf_counter()
                rows.append(r)
        if not rows:
            return None
        state = rows[0].state
        width = max(len(r.ids) for r in rows)
        ids = np.full((len(rows), width), state.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[i, width - len(r.ids):], mask[i, width - len(r.ids):] = r.ids, 1
        logits, past = state.backend.forward([r.category for r in rows], ids, mask, None)
        return _Running(rows, logits, past, mask)

    @staticmethod
    def _join(running: _Running, joined: _Running) -> None:
        """Stack `joined` under `running`, the shorter of the two left-padded to the other's length."""
        width = max(running.mask.shape[1], joined.mask.shape[1])
        pads = [width - running.mask.shape[1], width - joined.mask.shape[1]]
        running.past = running.state.backend.stack(running.past, joined.past, pads)
        running.mask = np.concatenate([np.pad(m.mask, ((0, 0), (p, 0))) for m, p in zip((running, joined), pads)])
        running.logits = np.concatenate([running.logits, joined.logits])
        running.rows += joined.rows

    def _step(self, running: _Running) -> bool:
        """Pick each row's next token, answer the rows that are done, run the rest one step; False once empty."""
        rows, backend = running.rows, running.state.backend
        tokens = running.logits.argmax(-1)
        logprobs = signals.token_logprobs(running.logits, tokens)
        keep = []
        for i, r in enumerate(rows):
            r.batch_rows = r.batch_rows or len(rows)
            r.tokens.append(int(tokens[i]))
            r.logprobs.append(float(logprobs[i]))
            done = self._finished(r)
            if done:
                self._answer(r, done)
            elif r.cancelled.is_set():
                r.future.set_exception(Cancelled())
            else:
                keep.append(i)
        if not keep:
            return False
        mask, past = running.mask, running.past
        if len(keep) < len(rows):
            past, mask, tokens = backend.select(past, keep), mask[keep], tokens[keep]
            running.rows = [rows[i] for i in keep]
            unused = int(mask.any(0).argmax())  # leading columns only rows that left had used
            if unused:
                past, mask = backend.crop_left(past, unused), mask[:, unused:]
        running.mask = np.concatenate([mask, np.ones((len(keep), 1), np.int64)], axis=1)
        running.logits, running.past = backend.forward([r.category for r in running.rows], tokens[:, None],
                                                       running.mask, past)
        return True

    @staticmethod
    def _finished(r: GenerationRequest) -> tuple[str, str | None, str | None] | None:
        """(finish_reason, the text when a stop string cut it, that stop string) once the row is done, else None."""
        if r.tokens[-1] in r.state.stops:
            return "stop", None, None
        if r.stop_texts:
            text = r.state.tokenizer.decode(r.tokens, skip_special_tokens=True)
            found = [(i, s) for s in r.stop_texts if (i := text.find(s)) >= 0]
            if found:  # the answer ends before the first stop string it contains
                cut, stop = min(found)
                return "stop", text[:cut], stop
        if len(r.tokens) >= r.max_new:
            return "length", None, None
        return None

    @staticmethod
    def _answer(r: GenerationRequest, done: tuple[str, str | None, str | None]) -> None:
        reason, text, stop = done
        if text is None:
            text = r.state.tokenizer.decode(r.tokens, skip_special_tokens=True)
        r.future.set_result(Generated(r.tokens, text.strip(), signals.mean_logprob(r.logprobs), reason,
                                      queue_s=r.started - r.submitted, generate_s=time.perf_counter() - r.started,
                                      batch_rows=r.batch_rows, stop_text=stop))
