"""The OpenAI-compatible HTTP shim: /v1/chat/completions, /v1/models, /health, /metrics, /admin/reload.

Errors come back in OpenAI's shape {"error": {message, type, param, code}}; a 500 never carries a
stack trace (it is logged server-side). A request's engine work runs in a worker thread, so the event
loop stays free; a client that disconnects meanwhile has its request dropped from the generation batch.

Bad input gets a 4xx, never a 500: the body is read up to `max_body_bytes` (413 beyond it), parsed,
searched for lone surrogates (they cannot be encoded, so they would fail later), then validated
strictly (types, finite numbers, ranges); fields the shim does not implement get a 400 naming them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qeforge.categories import registered_model_name
from qeforge.serving.batching import DEFAULT_MAX_BATCH
from qeforge.serving.engine import AUTO_MODEL, Completion, Engine, ServingError
from qeforge.serving.requests import BadRequest, default_max_body_bytes, parse_chat_request, read_body
from qeforge.serving.source import AdapterSource, default_source

log = logging.getLogger(__name__)


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    backend: str = "torch"
    source: AdapterSource | None = None  # None -> default_source()
    classifier_path: str | None = None
    onnx_cache_dir: str | None = None
    max_body_bytes: int = field(default_factory=default_max_body_bytes)  # larger chat bodies get a 413
    # Rows per generation batch; 1 serializes generation (the bench's baseline).
    max_batch: int = field(default_factory=lambda: int(os.environ.get("QEFORGE_MAX_BATCH", DEFAULT_MAX_BATCH)))
    db: object | None = None  # LanceDB connection for the knn signal (with its storage_options); None: the default

    def build_engine(self) -> Engine:
        return Engine(self.source or default_source(), backend=self.backend, classifier_path=self.classifier_path,
                      onnx_cache_dir=self.onnx_cache_dir, max_batch=self.max_batch, db=self.db)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        fine = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
        self.requests = Counter("qeforge_requests", "Chat requests", ["category", "decision", "status"], registry=r)
        self.latency = Histogram("qeforge_request_latency_seconds", "Chat request latency", ["category"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_rows = Histogram("qeforge_generation_batch_rows", "Rows in the batch a local answer came from",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue = Histogram("qeforge_generation_queue_seconds", "Submitted until it started or joined a batch",
                               registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.routing = Histogram("qeforge_routing_decision_seconds", "Signal computation + threshold compare",
                                 ["signal"], registry=r, buckets=fine)
        self.tokens = Counter("qeforge_generated_tokens", "Tokens generated locally", ["category"], registry=r)
        self.waiting = Gauge("qeforge_generation_waiting", "Requests waiting for a generation batch", registry=r)

    def observe(self, c: Completion, seconds: float) -> None:
        self.requests.labels(c.category, c.decision, "200").inc()
        self.latency.labels(c.category).observe(seconds)
        if c.batch_rows:
            self.batch_rows.observe(c.batch_rows)
            self.queue.observe(c.timings["queue_s"])
        if "routing_s" in c.timings:
            self.routing.labels(c.signal).observe(c.timings["routing_s"])
        self.tokens.labels(c.category).inc(c.local_tokens)


def _num(x: float | None):
    """JSON-safe number: +-inf as "inf"/"-inf" (the policy files' convention), nan/None as null."""
    if x is None or math.isnan(x):
        return None
    return ("inf" if x > 0 else "-inf") if math.isinf(x) else round(x, 6)


def error(status: int, message: str, *, param: str | None = None, code: str | None = None,
          type_: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class _Unauthorized(Exception):
    pass


def create_app(engine_or_settings: Engine | Settings, *, api_key: str | None = None,
               max_body_bytes: int | None = None) -> FastAPI:
    if isinstance(engine_or_settings, Settings):
        engine = engine_or_settings.build_engine()
        api_key = api_key if api_key is not None else engine_or_settings.api_key
        max_body_bytes = max_body_bytes if max_body_bytes is not None else engine_or_settings.max_body_bytes
    else:
        engine = engine_or_settings
    max_body_bytes = max_body_bytes if max_body_bytes is not None else default_max_body_bytes()
    metrics = Metrics()
    metrics.waiting.set_function(lambda: engine.batcher.waiting)
    app = FastAPI(title="qeforge shim", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics

    def has_key(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return bool(api_key) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    def check_key(request: Request) -> None:
        if api_key and not has_key(request):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request, exc):
        return error(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return error(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(ServingError)
    async def refused(request, exc: ServingError):
        return error(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, "We could not parse the JSON body of your request: it is not valid JSON.")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return error(400, f"Invalid request{f' ({param})' if param else ''}: {first.get('msg', 'malformed body')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "The server had an error while processing your request.", type_="server_error")

    @app.get("/health")
    async def health(request: Request):
        """Status for anyone; where the models live (host paths) only for a caller with the API key."""
        snap = engine.snapshot
        status = {"status": "degraded" if engine.refused else "ok", "backend": engine.backend,
                  "adapters": {c: a.version for c, a in engine.served.items()}, "policy_version": snap.policy_version}
        if engine.refused:  # e.g. an ONNX model that failed its parity check against PyTorch
            status["refused"] = dict(engine.refused)
        return {**status, "base_model": snap.base_model, "source": snap.source} if has_key(request) else status

    api = APIRouter(dependencies=[Depends(check_key)])

    @api.get("/v1/models")
    async def models():
        created = int(time.time())
        ids = [registered_model_name(c) for c in engine.served] + [AUTO_MODEL]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "qeforge"} for i in ids]}

    @api.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/admin/reload")
    async def reload():
        try:
            snap = await run_in_threadpool(engine.reload)
        except Exception:
            log.exception("reload failed; still serving the previous snapshot")
            return error(500, "reload failed; still serving the previous snapshot (see the server log)", type_="server_error")
        return {"status": "reloaded", "base_model": snap.base_model, "adapters": {c: a.version for c, a in snap.adapters.items()},
                "policy_version": snap.policy_version, "source": snap.source}

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        start = time.perf_counter()
        try:
            body, messages = parse_chat_request(await read_body(request, max_body_bytes))
            max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
            c = await _until_disconnected(request, engine, body, messages, max_tokens)
        except BadRequest as exc:
            metrics.requests.labels("none", "rejected", str(exc.status)).inc()
            raise
        except ServingError as exc:
            metrics.requests.labels("none", "cancelled" if exc.status == 499 else "rejected", str(exc.status)).inc()
            raise
        except ClientDisconnect:  # gone while sending the body: nobody to answer, and not a server error
            metrics.requests.labels("none", "cancelled", "499").inc()
            return Response(status_code=499)
        except Exception:
            metrics.requests.labels("none", "error", "500").inc()
            raise
        metrics.observe(c, time.perf_counter() - start)
        route = {"category": c.category, "adapter_version": c.adapter_version, "signal": c.signal,
                 "confidence": _num(c.confidence), "threshold": _num(c.threshold), "decision": c.decision,
                 "policy_version": c.policy_version}
        body_out = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": c.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason}],
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "total_tokens": c.prompt_tokens + c.completion_tokens},
            "qeforge": {**route, "escalation_error": c.escalation_error, "batch_rows": c.batch_rows,
                        "timings_ms": {k.removesuffix("_s"): round(v * 1000, 4) for k, v in c.timings.items()}},
        }
        header = "; ".join(f"{k}={route[k] if route[k] is not None else 'none'}"
                           for k in ("category", "decision", "confidence", "threshold", "adapter_version"))
        return JSONResponse(body_out, headers={"X-QEForge-Route": header})

    app.include_router(api)
    return app


async def _until_disconnected(request: Request, engine: Engine, body, messages, max_tokens) -> Completion:
    """engine.complete in a worker thread, with `cancelled` set if the client disconnects first.
    The body has been read, so the next ASGI message is http.disconnect: when the client goes, or
    (uvicorn) once the response is sent."""
    cancelled = threading.Event()

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancelled.set()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(engine.complete, body.model, messages, max_tokens=max_tokens,
                                       metadata=body.metadata, stop=body.stop_strings(), cancelled=cancelled)
    finally:
        watcher.cancel()


def serve(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
