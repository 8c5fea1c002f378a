"""OpenAI's protocol onto the gateway: /v1/chat/completions (streamed or not), /v1/models, /v1/embeddings.

Requests become a chat.ChatCall: system and developer turns join the system text, image parts
become image blocks, assistant tool_calls tool_use blocks, `tool` turns tool_result blocks, tools
Anthropic tool definitions, response_format a JSON request. Sampling settings are checked, then
left to Claude: the local answer is greedy (temperature 0), so routing confidence means the same on
every call. `usage` is always present (agentic-qe reads it without a null check).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from qeforge.categories import registered_model_name
from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL
from qeforge.serving.chat import ChatCall, Completion, merge_turns, pieces, text_block, tool_arguments
from qeforge.serving.engine import AUTO_MODEL
from qeforge.serving.gateway import respond
from qeforge.serving.requests import BadRequest, finite, validate

Number = StrictFloat | StrictInt


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[dict] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: StrictStr | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number | None = finite(0, 2)
    top_p: Number | None = finite(0, 1)
    presence_penalty: Number | None = finite(-2, 2)
    frequency_penalty: Number | None = finite(-2, 2)
    seed: StrictInt | None = None
    user: StrictStr | None = None
    n: StrictInt | None = Field(None, ge=1, le=8)
    stream: StrictBool | None = False
    stream_options: dict | None = None
    logprobs: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None  # OpenAI's metadata: string keys and values
    stop: StrictStr | list[StrictStr] | None = None
    tools: list[dict] | None = None
    tool_choice: StrictStr | dict | None = None
    response_format: dict | None = None


# Legacy or other-modality fields Claude cannot take either: a 400 naming the field.
UNSUPPORTED = ("functions", "function_call", "audio", "prediction")


def _param(where: str, message: str) -> BadRequest:
    return BadRequest(400, f"Invalid request ({where}): {message}", param=where)


def _image(part: dict, where: str) -> dict:
    url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
    if not isinstance(url, str):
        raise _param(f"{where}.image_url.url", "an image part needs a URL")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return {"type": "image", "source": {"type": "base64", "media_type": head[5:].split(";")[0], "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [text_block(content)]
    out = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(text_block(part["text"]))
        elif kind == "image_url":
            out.append(_image(part, f"{where}[{i}]"))
        elif kind in ("input_audio", "file"):
            out.append({"type": "document" if kind == "file" else "audio", "source": part})
        else:
            raise _param(f"{where}[{i}]", "a content part is a text, image_url, input_audio or file object")
    return out


def _tool_use(call: dict, where: str) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _param(where, "a tool call needs function.name")
    try:
        arguments = json.loads(fn.get("arguments") or "{}")
    except (TypeError, ValueError):
        raise _param(f"{where}.function.arguments", "not a JSON string") from None
    return {"type": "tool_use", "id": str(call.get("id") or f"call_{uuid.uuid4().hex[:12]}"), "name": fn["name"],
            "input": arguments if isinstance(arguments, dict) else {"value": arguments}}


def _turns(messages: list[Message]) -> tuple[list[dict], list[dict]]:
    """(system blocks, Anthropic turns) from OpenAI messages."""
    system, turns = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}].content"
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise _param(where, "a string or a list of content parts (null only for an assistant's tool calls)")
        if m.role in ("system", "developer"):
            system += [b for b in _blocks(m.content, where) if b["type"] == "text"]
        elif m.role == "tool":
            text = "".join(b.get("text", "") for b in _blocks(m.content, where))
            turns.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": m.tool_call_id or "",
                                                       "content": text}]})
        else:
            blocks = _blocks(m.content, where)
            if m.role == "assistant":
                blocks += [_tool_use(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls or [])]
            turns.append({"role": m.role, "content": blocks})
    turns = [t for t in turns if t["content"]]
    if not any(t["role"] == "user" for t in turns):
        raise BadRequest(400, "'messages' must contain at least one user message", param="messages")
    return system, merge_turns(turns)


def _tools(tools: list[dict] | None) -> list[dict]:
    out = []
    for i, t in enumerate(tools or []):
        fn = t.get("function") if t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _param(f"tools[{i}]", "a tool is {type: function, function: {name, description, parameters}}")
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


def _tool_choice(choice) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise _param("tool_choice", "expected {type: function, function: {name}}")
        return {"type": "tool", "name": name}
    named = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
    if choice not in named:
        raise _param("tool_choice", "expected auto, none, required or a named function")
    return named[choice]


def _json_output(response_format: dict | None) -> dict | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"schema": None}
    if kind == "json_schema":
        return {"schema": (response_format.get("json_schema") or {}).get("schema")}
    raise _param("response_format.type", "expected text, json_object or json_schema")


def chat_call(data: dict, category_header: str | None = None) -> ChatCall:
    body = validate(ChatRequest, data)
    for name in UNSUPPORTED:
        if data.get(name) is not None:
            raise BadRequest(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or "" in stop:
        raise BadRequest(400, "'stop' takes 1 to 4 non-empty strings", param="stop")
    system, turns = _turns(body.messages)
    return ChatCall(
        protocol="openai", model=body.model, system=system[0]["text"] if len(system) == 1 else system or "", messages=turns,
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature, top_p=body.top_p,
        stop=stop, tools=_tools(body.tools), tool_choice=_tool_choice(body.tool_choice) if body.tools else None,
        n=body.n or 1, json_output=_json_output(body.response_format), stream=bool(body.stream),
        category=(body.metadata or {}).get("category") or category_header)


def _message(choice) -> dict:
    calls = [{"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": tool_arguments(b)}}
             for b in choice.tool_uses]
    return {"role": "assistant", "content": choice.text if choice.text or not calls else None,
            **({"tool_calls": calls} if calls else {})}


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def chat_response(c: Completion) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": c.model,
            "choices": [{"index": i, "message": _message(ch), "logprobs": None, "finish_reason": ch.finish}
                        for i, ch in enumerate(c.choices)],
            "usage": _usage(c), "qeforge": c.body_extra()}


def chat_stream(c: Completion, include_usage: bool):
    """SSE chunks: the role, the content in pieces, tool calls, the finish; usage if asked; [DONE]."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": c.model}

    def event(choices, **extra) -> bytes:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n".encode()

    for i, ch in enumerate(c.choices):
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in pieces(ch.text) if ch.text else ():
            yield event([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
        for j, b in enumerate(ch.tool_uses):
            call = {"index": j, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": tool_arguments(b)}}
            yield event([{"index": i, "delta": {"tool_calls": [call]}, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "finish_reason": ch.finish}], qeforge=c.body_extra())
    if include_usage:
        yield event([], usage=_usage(c))
    yield b"data: [DONE]\n\n"


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


def embedding_texts(data: dict) -> tuple[EmbeddingRequest, list[str]]:
    if isinstance(data.get("input"), list) and data["input"] and not all(isinstance(x, str) for x in data["input"]):
        raise BadRequest(400, "input must be a string or a list of strings (token arrays are not accepted)", param="input")
    body = validate(EmbeddingRequest, data)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > 2048:
        raise BadRequest(400, "input takes 1 to 2048 strings", param="input")
    if body.dimensions not in (None, EMBEDDING_DIM):
        raise BadRequest(400, f"dimensions must be {EMBEDDING_DIM} for {EMBEDDING_MODEL}", param="dimensions")
    return body, texts


def embedding_response(body: EmbeddingRequest, vectors: np.ndarray, tokens: int) -> dict:
    def encode(v: np.ndarray):
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()

    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def error_body(status: int, message: str, code: str | None, param: str | None) -> dict:
    kind = {401: "authentication_error", 404: "invalid_request_error", 503: "service_unavailable"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def router(gateway) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models")
    async def models():
        created = int(time.time())
        ids = [registered_model_name(c) for c in gateway.engine.served] + [AUTO_MODEL]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "qeforge"} for i in ids]}

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        data = await gateway.json_body(request)
        call = chat_call(data, request.headers.get("x-qeforge-category"))
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return respond(call, await gateway.answer(request, call), chat_response,
                       lambda c: chat_stream(c, include_usage), "text/event-stream")

    @api.post("/v1/embeddings")
    async def embeddings(request: Request):
        data = await gateway.json_body(request)
        body, texts = embedding_texts(data)
        vectors, tokens = await gateway.embed(body.model, texts)
        return embedding_response(body, vectors, tokens)

    return api
