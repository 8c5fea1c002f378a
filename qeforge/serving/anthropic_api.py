"""Anthropic's Messages protocol onto the gateway: POST /v1/messages (streamed or not) and
/v1/messages/count_tokens, errors in Anthropic's shape. agentic-qe's default provider speaks this.

The request is already the gateway's own shape (chat.ChatCall keeps Anthropic's turns), so it is
checked and passed on whole: an escalation forwards exactly what the client sent.
"""

from __future__ import annotations

import json
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from qeforge.serving.chat import ChatCall, Completion, pieces
from qeforge.serving.gateway import respond
from qeforge.serving.requests import BadRequest, finite, validate

Number = StrictFloat | StrictInt


class Block(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class Turn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: StrictStr | list[Block]


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    max_tokens: StrictInt = Field(ge=1)
    messages: list[Turn] = Field(min_length=1)
    system: StrictStr | list[Block] | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: Number | None = finite(0, 1)
    top_p: Number | None = finite(0, 1)
    top_k: StrictInt | None = Field(None, ge=0)
    metadata: dict | None = None
    thinking: dict | None = None
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    stream: StrictBool | None = False


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    messages: list[Turn] = Field(min_length=1)
    system: StrictStr | list[Block] | None = None
    tools: list[dict] | None = None


def _dump(blocks) -> str | list[dict]:
    return blocks if isinstance(blocks, str) else [b.model_dump(exclude_none=True) for b in blocks]


def _check_text_blocks(body) -> None:
    for i, t in enumerate(body.messages):
        for j, b in enumerate(t.content if isinstance(t.content, list) else ()):
            if b.type == "text" and b.text is None:
                raise BadRequest(400, f"messages.{i}.content.{j}.text: Field required", param=f"messages[{i}].content[{j}].text")


def messages_call(data: dict, category_header: str | None = None) -> ChatCall:
    body = validate(MessagesRequest, data)
    _check_text_blocks(body)
    category = (body.metadata or {}).get("category")
    return ChatCall(
        protocol="anthropic", model=body.model, system=_dump(body.system) if body.system is not None else "",
        messages=[{"role": t.role, "content": _dump(t.content)} for t in body.messages], max_tokens=body.max_tokens,
        temperature=body.temperature, top_p=body.top_p, stop=list(body.stop_sequences or []), tools=list(body.tools or []),
        tool_choice=body.tool_choice, thinking=body.thinking, stream=bool(body.stream),
        category=category if isinstance(category, str) else category_header)


def count_tokens_call(data: dict) -> ChatCall:
    body = validate(CountTokensRequest, data)
    _check_text_blocks(body)
    return ChatCall(protocol="anthropic", model=body.model, system=_dump(body.system) if body.system is not None else "",
                    messages=[{"role": t.role, "content": _dump(t.content)} for t in body.messages],
                    tools=list(body.tools or []))


def _stop_reason(choice) -> str:
    if choice.finish == "tool_calls":
        return "tool_use"
    if choice.finish == "length":
        return "max_tokens"
    return "stop_sequence" if choice.stop_sequence else "end_turn"


def _usage(c: Completion, output: bool = True) -> dict:
    return {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens if output else 0,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message_response(c: Completion, message_id: str | None = None) -> dict:
    choice = c.choices[0]
    return {"id": message_id or f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": c.model,
            "content": choice.blocks, "stop_reason": _stop_reason(choice), "stop_sequence": choice.stop_sequence,
            "usage": _usage(c), "qeforge": c.body_extra()}


def message_stream(c: Completion):
    """Anthropic's event sequence: message_start, per block start / deltas / stop, message_delta, message_stop."""

    def event(kind: str, **data) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start = message_response(c)
    choice = c.choices[0]
    yield event("message_start", message={**start, "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": _usage(c, output=False)})
    yield event("ping")
    for i, block in enumerate(choice.blocks):
        kind = block["type"]
        if kind == "text":
            yield event("content_block_start", index=i, content_block={"type": "text", "text": ""})
            for piece in pieces(block["text"]):
                yield event("content_block_delta", index=i, delta={"type": "text_delta", "text": piece})
        elif kind == "tool_use":
            yield event("content_block_start", index=i, content_block={**block, "input": {}})
            yield event("content_block_delta", index=i, delta={"type": "input_json_delta",
                                                               "partial_json": json.dumps(block.get("input", {}))})
        elif kind == "thinking":
            yield event("content_block_start", index=i, content_block={"type": "thinking", "thinking": ""})
            yield event("content_block_delta", index=i, delta={"type": "thinking_delta", "thinking": block.get("thinking", "")})
            yield event("content_block_delta", index=i, delta={"type": "signature_delta", "signature": block.get("signature", "")})
        else:  # redacted_thinking: whole in its start event
            yield event("content_block_start", index=i, content_block=block)
        yield event("content_block_stop", index=i)
    yield event("message_delta", delta={"stop_reason": _stop_reason(choice), "stop_sequence": choice.stop_sequence},
                usage={"output_tokens": c.completion_tokens}, qeforge=c.body_extra())
    yield event("message_stop")


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "api_error"}


def error_body(status: int, message: str, code: str | None, param: str | None) -> dict:
    error = {"type": ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"), "message": message}
    if code:
        error["reason"] = code  # the gateway's own code (e.g. not_confident on a decline): the SDK keeps the body
    return {"type": "error", "error": error}


def router(gateway) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/messages")
    async def messages(request: Request):
        call = messages_call(await gateway.json_body(request), request.headers.get("x-qeforge-category"))
        return respond(call, await gateway.answer(request, call), message_response, message_stream, "text/event-stream")

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        """The prompt in the local model's tokens: Claude's own tokenizer is not public, so this is an estimate of it."""
        call = count_tokens_call(await gateway.json_body(request))
        return {"input_tokens": gateway.engine.count_tokens(call)}

    return api
