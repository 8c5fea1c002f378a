"""What every protocol layer shares: reading a body, running a call on the engine, counting decisions.

A call's engine work runs in a worker thread, so the event loop stays free; a client that
disconnects meanwhile has its request dropped from the generation batch.
"""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL, same_model
from qeforge.serving.chat import ChatCall, Completion
from qeforge.serving.engine import Declined, Engine
from qeforge.serving.recording import CALLER_HEADER, Exchange, Recorder, feedback_row, record_feedback
from qeforge.serving.requests import BadRequest, parse_json, read_body

# MiniLM's name in Ollama's library; the ids agentic-qe and sentence-transformers send match same_model.
EMBEDDING_ALIASES = ("all-minilm",)


def protocol_of(path: str) -> str:
    """Which protocol's error shape a path answers in."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "ollama" if path.startswith("/api/") else "openai"


def respond(call: ChatCall, c: Completion, body, events, media_type: str) -> Response:
    """body(c) as JSON, or events(c) streamed when the call asked to stream; who answered in the header."""
    headers = {"X-QEForge-Route": c.route_header()}
    if call.stream:
        return StreamingResponse(events(c), media_type=media_type, headers=headers)
    return JSONResponse(body(c), headers=headers)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        fine = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
        self.requests = Counter("qeforge_requests", "Chat requests by protocol, category, decision and its reason",
                                ["protocol", "category", "decision", "reason", "status"], registry=r)
        self.latency = Histogram("qeforge_request_latency_seconds", "Chat request latency", ["protocol", "category"],
                                 registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_rows = Histogram("qeforge_generation_batch_rows", "Rows in the batch a local answer came from",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue = Histogram("qeforge_generation_queue_seconds", "Submitted until it started or joined a batch",
                               registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.routing = Histogram("qeforge_routing_decision_seconds", "Category, signal and threshold compare",
                                 ["signal"], registry=r, buckets=fine)
        self.tokens = Counter("qeforge_generated_tokens", "Tokens generated locally", ["category"], registry=r)
        self.embedded = Counter("qeforge_embedded_texts", "Texts embedded for /v1/embeddings and /api/embed", registry=r)
        self.waiting = Gauge("qeforge_generation_waiting", "Requests waiting for a generation batch", registry=r)

    def observe(self, protocol: str, c: Completion, seconds: float) -> None:
        self.requests.labels(protocol, c.category, c.decision, c.reason, "200").inc()
        self.latency.labels(protocol, c.category).observe(seconds)
        if c.batch_rows:
            self.batch_rows.observe(c.batch_rows)
            self.queue.observe(c.timings["queue_s"])
        if "routing_s" in c.timings:
            self.routing.labels(c.signal or "none").observe(c.timings["routing_s"])
        self.tokens.labels(c.category).inc(c.local_tokens)

    def refused(self, protocol: str, status: int, code: str | None, category: str = "none") -> None:
        decision = {499: "cancelled", 503: "declined"}.get(status, "error" if status >= 500 else "rejected")
        self.requests.labels(protocol, category, decision, code or "none", str(status)).inc()


class DroppedExchanges:
    """qeforge_exchanges_dropped_total: the recorder's own count (queue full, or an append failed), read per scrape."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("qeforge_exchanges_dropped", "Exchanges not recorded: the recorder's queue was full "
                                  "or its append failed", value=self.recorder.dropped)


class Gateway:
    def __init__(self, engine: Engine, max_body_bytes: int, recorder: Recorder | None = None):
        self.engine, self.max_body_bytes = engine, max_body_bytes
        self.recorder = recorder or Recorder(None, enabled=False)
        self.metrics = Metrics()
        self.metrics.waiting.set_function(lambda: engine.batcher.waiting)
        self.metrics.registry.register(DroppedExchanges(self.recorder))

    async def json_body(self, request: Request) -> dict:
        return parse_json(await read_body(request, self.max_body_bytes))

    async def answer(self, request: Request, call: ChatCall) -> Completion:
        """engine.complete in a worker thread, with `cancelled` set if the client disconnects first.
        The body has been read, so the next ASGI message is http.disconnect: when the client goes,
        or (uvicorn) once the response is sent."""
        start, received_at = time.perf_counter(), time.time()
        cancelled = threading.Event()

        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancelled.set()

        watcher = asyncio.create_task(watch())
        try:
            c = await run_in_threadpool(self.engine.complete, call, cancelled)
        except Declined as declined:  # a 503 is an exchange too: recorded here, where the call is known
            self.record(request, call, received_at, time.perf_counter() - start, declined=declined)
            raise
        finally:
            watcher.cancel()
        seconds = time.perf_counter() - start
        self.metrics.observe(call.protocol, c, seconds)
        c.exchange_id = self.record(request, call, received_at, seconds, c)
        return c

    def record(self, request: Request, call: ChatCall, received_at: float, latency_s: float,
               completion: Completion | None = None, declined: Declined | None = None) -> str | None:
        """Queue the exchange for the recorder (never waits); only User-Agent and the caller header of the
        request's. The exchange's id, for the client's feedback; None when it is not recorded."""
        exchange = Exchange(call, completion, request.url.path, request.headers.get("user-agent"),
                            request.headers.get(CALLER_HEADER), received_at, latency_s, declined)
        return exchange.id if self.recorder.record(exchange) else None

    async def feedback(self, request: Request) -> dict:
        """POST /v1/feedback: the fleet's verdict on an answer it used, kept beside the exchanges."""
        if not self.recorder.enabled:
            raise BadRequest(404, "feedback needs recorded exchanges, and recording is off here", code="not_found")
        try:
            row = feedback_row(await self.json_body(request))
        except ValueError as err:
            raise BadRequest(400, str(err), code="invalid_request_error") from None
        await run_in_threadpool(record_feedback, self.recorder.db, row)
        return {"recorded": True, "exchange_id": row["exchange_id"], "outcome": row["outcome"]}

    async def embed(self, model: str, texts: list[str]):
        """(unit vectors [n, 384], tokens read) for the embeddings routes. Only MiniLM is served: a
        request for another model gets a 404 rather than vectors of a different space."""
        if not (same_model(model) or model.split(":")[0].lower() in EMBEDDING_ALIASES):
            raise BadRequest(404, f"The embedding model {model!r} does not exist here; this server embeds with "
                             f"{EMBEDDING_MODEL} ({EMBEDDING_DIM}-d)", param="model", code="model_not_found")
        vectors, tokens = await run_in_threadpool(self.engine.embed_counted, texts)
        self.metrics.embedded.inc(len(texts))
        return vectors, tokens
