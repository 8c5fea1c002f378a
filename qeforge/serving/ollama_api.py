"""Ollama's protocol onto the gateway: /api/chat and /api/generate (NDJSON streamed by default, as Ollama
does, or stream: false), /api/tags, /api/version, /api/embed and /api/embeddings; GET / answers as
Ollama's does. agentic-qe's Ollama provider probes /api/tags, then posts /api/chat.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from qeforge.categories import registered_model_name
from qeforge.serving.chat import ChatCall, Completion, merge_turns, pieces, text_block
from qeforge.serving.engine import AUTO_MODEL
from qeforge.serving.gateway import respond
from qeforge.serving.requests import BadRequest, validate

OLLAMA_VERSION = "0.12.0"  # the API this layer follows; clients print it, none gate on it
NDJSON = "application/x-ndjson"  # Ollama streams one JSON object per line
Number = StrictFloat | StrictInt


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")
    num_predict: StrictInt | None = None  # -1: no limit, -2: fill the context
    temperature: Number | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: Number | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    stop: list[StrictStr] | StrictStr | None = None


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    function: dict


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list[StrictStr] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: StrictStr | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict] | None = None
    format: StrictStr | dict | None = None
    options: Options | None = None
    stream: StrictBool = True
    think: StrictBool | StrictStr | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    prompt: StrictStr = ""
    system: StrictStr | None = None
    images: list[StrictStr] | None = None
    format: StrictStr | dict | None = None
    options: Options | None = None
    stream: StrictBool = True


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    input: StrictStr | list[StrictStr] | None = None
    prompt: StrictStr | None = None  # /api/embeddings, the older route


def _image(data: str) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def _json_output(fmt) -> dict | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"schema": None}
    if isinstance(fmt, dict):
        return {"schema": fmt}
    raise BadRequest(400, "format must be \"json\" or a JSON schema", param="format")


def _limits(options: Options | None) -> dict:
    o = options or Options()
    stop = [o.stop] if isinstance(o.stop, str) else list(o.stop or [])
    if "" in stop:
        raise BadRequest(400, "options.stop: empty strings stop nothing", param="options.stop")
    # num_predict -1 (no limit) and -2 (fill the context): the room the context has.
    return {"max_tokens": o.num_predict if o.num_predict and o.num_predict > 0 else None,
            "temperature": o.temperature, "top_p": o.top_p, "stop": stop}


def _tools(tools: list[dict] | None) -> list[dict]:
    out = []
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(400, f"tools[{i}]: a tool is {{type: function, function: {{name, parameters}}}}", param=f"tools[{i}]")
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


def chat_call(data: dict, category_header: str | None = None) -> ChatCall:
    body = validate(ChatRequest, data)
    system, turns, pending = [], [], []  # pending: tool_use ids in order, for the tool turns that answer them
    for m in body.messages:
        if m.role == "system":
            system.append(m.content)
            continue
        if m.role == "tool":
            tool_id = pending.pop(0) if pending else f"toolu_{uuid.uuid4().hex[:12]}"
            turns.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": m.content}]})
            continue
        blocks = [text_block(m.content)] if m.content else []
        blocks += [_image(i) for i in m.images or []]
        for call in m.tool_calls or []:
            pending.append(f"toolu_{uuid.uuid4().hex[:12]}")
            blocks.append({"type": "tool_use", "id": pending[-1], "name": str(call.function.get("name", "")),
                           "input": call.function.get("arguments") or {}})
        if blocks:
            turns.append({"role": m.role, "content": blocks})
    if not any(t["role"] == "user" for t in turns):
        raise BadRequest(400, "messages must contain at least one user message", param="messages")
    return ChatCall(protocol="ollama", model=body.model, system="\n\n".join(system), messages=merge_turns(turns),
                    tools=_tools(body.tools), json_output=_json_output(body.format), stream=body.stream,
                    category=category_header, **_limits(body.options))


def generate_call(data: dict, category_header: str | None = None) -> tuple[GenerateRequest, ChatCall | None]:
    """None for an empty prompt: Ollama answers that by loading the model, with nothing generated."""
    body = validate(GenerateRequest, data)
    if not body.prompt and not body.images:
        return body, None
    content = [text_block(body.prompt)] + [_image(i) for i in body.images or []]
    return body, ChatCall(protocol="ollama", model=body.model, system=body.system or "",
                          messages=merge_turns([{"role": "user", "content": content}]),
                          json_output=_json_output(body.format), stream=body.stream, category=category_header,
                          **_limits(body.options))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _stats(c: Completion) -> dict:
    ns = lambda key: int(c.timings.get(key, 0.0) * 1e9)  # noqa: E731 - Ollama reports nanoseconds
    return {"done_reason": "length" if c.choices[0].finish == "length" else "stop", "total_duration": ns("engine_s"),
            "load_duration": 0, "prompt_eval_count": c.prompt_tokens, "prompt_eval_duration": ns("queue_s"),
            "eval_count": c.completion_tokens, "eval_duration": ns("generate_s")}


def _tool_calls(choice) -> dict:
    calls = [{"function": {"name": b["name"], "arguments": b.get("input", {})}} for b in choice.tool_uses]
    return {"tool_calls": calls} if calls else {}


def chat_response(c: Completion) -> dict:
    choice = c.choices[0]
    return {"model": c.model, "created_at": _now(), "message": {"role": "assistant", "content": choice.text, **_tool_calls(choice)},
            "done": True, **_stats(c), "qeforge": c.body_extra()}


def generate_response(c: Completion) -> dict:
    return {"model": c.model, "created_at": _now(), "response": c.text, "done": True, **_stats(c), "qeforge": c.body_extra()}


def _ndjson(parts: list[dict], last: dict):
    for part in parts:
        yield (json.dumps({**part, "created_at": _now(), "done": False}) + "\n").encode()
    yield (json.dumps(last) + "\n").encode()


def chat_stream(c: Completion):
    choice, last = c.choices[0], chat_response(c)
    parts = [{"model": c.model, "message": {"role": "assistant", "content": p}} for p in pieces(choice.text)]
    if choice.tool_uses:
        parts.append({"model": c.model, "message": {"role": "assistant", "content": "", **_tool_calls(choice)}})
    return _ndjson(parts, {**last, "message": {"role": "assistant", "content": ""}})


def generate_stream(c: Completion):
    parts = [{"model": c.model, "response": p} for p in pieces(c.text)]
    return _ndjson(parts, {**generate_response(c), "response": ""})


def error_body(status: int, message: str, code: str | None, param: str | None) -> dict:
    return {"error": message, **({"reason": code} if code else {})}


def router(gateway) -> APIRouter:
    api = APIRouter()

    @api.post("/api/chat")
    async def chat(request: Request):
        call = chat_call(await gateway.json_body(request), request.headers.get("x-qeforge-category"))
        return respond(call, await gateway.answer(request, call), chat_response, chat_stream, NDJSON)

    @api.post("/api/generate")
    async def generate(request: Request):
        body, call = generate_call(await gateway.json_body(request), request.headers.get("x-qeforge-category"))
        if call is None:
            return {"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        return respond(call, await gateway.answer(request, call), generate_response, generate_stream, NDJSON)

    @api.get("/api/tags")
    async def tags():
        """What is served, as Ollama lists local models; `qeforge` routes by the classifier."""
        snap = gateway.engine.snapshot
        names = [registered_model_name(c) for c in gateway.engine.served] + [AUTO_MODEL]
        details = {"format": "safetensors", "family": "qeforge", "families": ["qeforge"], "parameter_size": "",
                   "quantization_level": "", "parent_model": ""}
        return {"models": [{"name": f"{n}:latest", "model": f"{n}:latest", "modified_at": _now(), "size": 0,
                            "digest": f"sha256:{uuid.uuid5(uuid.NAMESPACE_URL, f'{n}@{snap.policy_version}').hex}",
                            "details": details} for n in names]}

    @api.get("/api/version")
    async def version():
        return {"version": OLLAMA_VERSION}

    @api.post("/api/embed")
    async def embed(request: Request):
        body = validate(EmbedRequest, await gateway.json_body(request))
        texts = [body.input] if isinstance(body.input, str) else list(body.input or [])
        if not texts:
            raise BadRequest(400, "input takes a string or a non-empty list of strings", param="input")
        start = time.perf_counter()
        vectors, tokens = await gateway.embed(body.model, texts)
        return {"model": body.model, "embeddings": np.asarray(vectors).tolist(),
                "total_duration": int((time.perf_counter() - start) * 1e9), "load_duration": 0, "prompt_eval_count": tokens}

    @api.post("/api/embeddings")
    async def embeddings(request: Request):
        body = validate(EmbedRequest, await gateway.json_body(request))
        vectors, _ = await gateway.embed(body.model, [body.prompt or ""])
        return {"embedding": np.asarray(vectors)[0].tolist()}

    return api


def root_router() -> APIRouter:
    """GET / and HEAD / as Ollama answers them: some clients probe the root before anything else."""
    api = APIRouter()

    @api.api_route("/", methods=["GET", "HEAD"])
    async def root():
        return PlainTextResponse("Ollama is running")

    return api

