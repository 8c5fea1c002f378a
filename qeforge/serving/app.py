"""The gateway's HTTP app: the fleet's three protocols on one engine, plus /health, /metrics, /admin/reload
and /v1/feedback (the fleet's verdict on an answer, by its qeforge.exchange_id).

Protocol layers (thin translations onto chat.ChatCall, as vLLM's and llama.cpp's servers do):
openai_api (/v1/chat/completions, /v1/models, /v1/embeddings), anthropic_api (/v1/messages,
/v1/messages/count_tokens), ollama_api (/api/chat, /api/generate, /api/tags, /api/version, /api/embed).
Errors come back in the shape of the protocol the path belongs to; a 500 never carries a stack
trace (it is logged server-side). Every answer names who answered and why (X-QEForge-Route), and
every exchange, answered or declined, is recorded off the request path (recording.py).

Bad input gets a 4xx, never a 500: the body is read up to `max_body_bytes` (413 beyond it), parsed,
searched for lone surrogates (they cannot be encoded, so they would fail later), then validated
strictly (types, finite numbers, ranges). A valid request is answered: locally, by Claude, or (no
escalation client, fallback "decline") with a 503 whose code names the reason.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qeforge.serving import anthropic_api, ollama_api, openai_api
from qeforge.serving.batching import DEFAULT_MAX_BATCH
from qeforge.curation.categorize import MIN_CATEGORY_PROBABILITY, MIN_CATEGORY_SIMILARITY
from qeforge.serving.engine import Declined, Engine, ServingError
from qeforge.serving.escalation import DEFAULT_CLAUDE_MODEL, Escalation
from qeforge.serving.gateway import Gateway, protocol_of
from qeforge.serving.recording import DEFAULT_REDACT_PATTERNS, Recorder
from qeforge.serving.requests import DEFAULT_MAX_BODY_BYTES, BadRequest
from qeforge.serving.source import AdapterSource

log = logging.getLogger(__name__)
ERROR_BODIES = {"openai": openai_api.error_body, "anthropic": anthropic_api.error_body, "ollama": ollama_api.error_body}


@dataclass
class Settings:
    """Everything `qeforge serve` runs with, resolved by the caller (pipelines.resources.ServingSettings)."""

    source: AdapterSource
    onnx_cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    backend: str = "torch"
    classifier_path: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger bodies get a 413
    max_batch: int = DEFAULT_MAX_BATCH  # rows per generation batch; 1 serializes generation (the bench's baseline)
    db: object | None = None  # LanceDB connection for the knn signal (with its storage_options)
    escalation: Escalation | None = None  # Claude; None: `fallback` decides
    claude_model: str = DEFAULT_CLAUDE_MODEL
    fallback: str = "local"
    model_aliases: dict[str, str] = field(default_factory=dict)
    min_category_probability: float = MIN_CATEGORY_PROBABILITY
    min_category_similarity: float = MIN_CATEGORY_SIMILARITY
    record_exchanges: bool = True  # every exchange into db's `exchanges` table (recording.py); no db, no recording
    redact_patterns: tuple[str, ...] = DEFAULT_REDACT_PATTERNS  # matches become [REDACTED] before a row is written

    def build_recorder(self) -> Recorder:
        return Recorder(self.db, enabled=self.record_exchanges and self.db is not None, redact_patterns=self.redact_patterns)

    def build_engine(self) -> Engine:
        return Engine(self.source, backend=self.backend, escalation=self.escalation, claude_model=self.claude_model,
                      fallback=self.fallback, model_aliases=self.model_aliases,
                      min_category_probability=self.min_category_probability,
                      min_category_similarity=self.min_category_similarity, classifier_path=self.classifier_path,
                      onnx_cache_dir=self.onnx_cache_dir, max_batch=self.max_batch, db=self.db)


def error(request: Request, status: int, message: str, *, code: str | None = None, param: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    body = ERROR_BODIES[protocol_of(request.url.path)](status, message, code, param)
    return JSONResponse(body, status_code=status, headers=headers)


class _Unauthorized(Exception):
    pass


class _ApiKey:
    """OpenAI's and Ollama's clients send 'Authorization: Bearer <key>', Anthropic's 'x-api-key: <key>'."""

    def __init__(self, key: str | None):
        self.key = key

    def sent(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        sent = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        return bool(self.key) and hmac.compare_digest(sent.encode(), self.key.encode())

    def require(self, request: Request) -> None:
        """The guarded routes' dependency."""
        if self.key and not self.sent(request):
            raise _Unauthorized()


def create_app(engine_or_settings: Engine | Settings, *, api_key: str | None = None,
               max_body_bytes: int | None = None, recorder: Recorder | None = None) -> FastAPI:
    """recorder: where exchanges go (Settings build theirs; an engine alone records nothing); closed,
    so flushed, when the server shuts down."""
    if isinstance(engine_or_settings, Settings):
        settings = engine_or_settings
        return create_app(settings.build_engine(), api_key=settings.api_key if api_key is None else api_key,
                          max_body_bytes=settings.max_body_bytes if max_body_bytes is None else max_body_bytes,
                          recorder=recorder or settings.build_recorder())
    engine = engine_or_settings
    gateway = Gateway(engine, DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes, recorder)
    key = _ApiKey(api_key)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(gateway.recorder.close)

    app = FastAPI(title="qeforge gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  exception_handlers=ERROR_HANDLERS)
    app.state.engine, app.state.metrics = engine, gateway.metrics
    app.include_router(_open_routes(engine, key))
    app.include_router(_guarded_routes(engine, gateway, key))
    app.include_router(ollama_api.root_router())
    return app


def _count_refusal(request: Request, status: int, code: str | None, category: str = "none") -> None:
    if request.method == "POST" and request.url.path != "/admin/reload":
        request.app.state.metrics.refused(protocol_of(request.url.path), status, code, category)


async def _unauthorized(request: Request, exc: _Unauthorized):
    return error(request, 401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                 code="invalid_api_key")


async def _bad_request(request: Request, exc: BadRequest):
    _count_refusal(request, exc.status, exc.code)
    return error(request, exc.status, exc.message, param=exc.param, code=exc.code)


async def _refused(request: Request, exc: ServingError):
    declined = isinstance(exc, Declined)
    _count_refusal(request, exc.status, exc.code, exc.category if declined else "none")
    headers = {"X-QEForge-Route": f"decision=declined; reason={exc.code}; category={exc.category}"} if declined else None
    return error(request, exc.status, exc.message, param=exc.param, code=exc.code, headers=headers)


async def _gone(request: Request, exc: ClientDisconnect):  # gone while sending the body: nobody to answer, not a server error
    _count_refusal(request, 499, "client_closed")
    return Response(status_code=499)


async def _invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return error(request, 400, "We could not parse the JSON body of your request: it is not valid JSON.")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return error(request, 400, f"Invalid request{f' ({param})' if param else ''}: {first.get('msg', 'malformed body')}",
                 param=param)


async def _http_error(request: Request, exc: StarletteHTTPException):
    return error(request, exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)


async def _crashed(request: Request, exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    _count_refusal(request, 500, "server_error")
    return error(request, 500, "The server had an error while processing your request.")


# Every error in the shape of the path's protocol; refused POSTs counted in the metrics.
ERROR_HANDLERS = {_Unauthorized: _unauthorized, BadRequest: _bad_request, ServingError: _refused, ClientDisconnect: _gone,
                  RequestValidationError: _invalid, StarletteHTTPException: _http_error, Exception: _crashed}


def _open_routes(engine: Engine, key: _ApiKey) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request):
        """Status for anyone; where the models live (host paths) only for a caller with the API key."""
        snap = engine.snapshot
        status = {"status": "degraded" if engine.refused else "ok", "backend": engine.backend,
                  "generation": engine.generation_path,
                  "adapters": {c: a.version for c, a in engine.served.items()}, "policy_version": snap.policy_version,
                  "escalation": engine.escalation is not None, "fallback": engine.fallback}
        if engine.refused:  # e.g. an ONNX model that failed its parity check against PyTorch
            status["refused"] = dict(engine.refused)
        return {**status, "base_model": snap.base_model, "source": snap.source} if key.sent(request) else status

    return router


def _guarded_routes(engine: Engine, gateway: Gateway, key: _ApiKey) -> APIRouter:
    """The three protocols, /metrics, /admin/reload and /v1/feedback: the API key, when one is set."""
    router = APIRouter(dependencies=[Depends(key.require)])

    @router.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.post("/admin/reload")
    async def reload(request: Request):
        try:
            snap = await run_in_threadpool(engine.reload)
        except Exception:
            log.exception("reload failed; still serving the previous snapshot")
            return error(request, 500, "reload failed; still serving the previous snapshot (see the server log)")
        return {"status": "reloaded", "base_model": snap.base_model, "adapters": {c: a.version for c, a in snap.adapters.items()},
                "policy_version": snap.policy_version, "source": snap.source}

    @router.post("/v1/feedback")
    async def feedback(request: Request):
        return await gateway.feedback(request)

    for protocol in (openai_api, anthropic_api, ollama_api):
        router.include_router(protocol.router(gateway))
    return router


def serve(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
