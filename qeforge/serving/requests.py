"""The chat request as the shim accepts it: size limit, JSON, Unicode, schema, unsupported fields.

Every refusal is a BadRequest with an HTTP status (400, or 413 for a body over the limit) and the
field it names, so bad input never reaches the engine as something that could fail with a 500.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

# Phi-4's 16k-token context is about 64 KiB of text; 4 MiB leaves room for JSON escaping and many
# turns while a 20 MB body is refused before it is read.
DEFAULT_MAX_BODY_BYTES = 4 << 20


def default_max_body_bytes() -> int:
    return int(os.environ.get("QEFORGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))



def _finite(low: float, high: float):
    return Field(None, ge=low, le=high, allow_inf_nan=False)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]  # null is for tool calls, which the shim does not make
    name: StrictStr | None = None


class ChatRequest(BaseModel):
    """The accepted shape of a chat request. Sampling settings are checked and then ignored: the
    local answer is greedy (temperature 0), so routing confidence means the same on every call."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | None = _finite(0, 2)
    top_p: StrictFloat | None = _finite(0, 1)
    presence_penalty: StrictFloat | None = _finite(-2, 2)
    frequency_penalty: StrictFloat | None = _finite(-2, 2)
    seed: StrictInt | None = None
    user: StrictStr | None = None
    n: StrictInt | None = Field(None, ge=1)
    stream: StrictBool | None = False
    logprobs: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None  # OpenAI's metadata: string keys and values
    stop: StrictStr | list[StrictStr] | None = None

    def stop_strings(self) -> list[str]:
        """OpenAI's `stop`: one string or up to 4; the local answer ends before the first one it contains."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# OpenAI fields the shim does not implement: any value but null gets a 400 naming the field.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
               "top_logprobs", "logit_bias", "audio", "modalities", "prediction", "stream_options")


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, message, param, code


def _param(loc) -> str | None:
    """A pydantic error location as a field path, `messages[0].content`; union branch tags
    (`str`, `list[TextPart]`) end it."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in str(part):
            break
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _lone_surrogate(data) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, else None. Iterative:
    nesting depth is bounded by the JSON parser, not by this walk."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if _has_surrogate(key):
                    return path or "body"
                stack.append((where, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str) and _has_surrogate(value):
            return path or "body"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 once it is known to pass `limit` bytes: by Content-Length before
    reading anything, else (chunked) as soon as the bytes read pass it."""
    too_large = BadRequest(413, f"The request body is larger than this server's limit of {limit} bytes.",
                           code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, list[dict]]:
    """The validated request and its messages as plain dicts, or BadRequest naming the field."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise BadRequest(400, "We could not parse the JSON body of your request: it is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "The request body must be a JSON object.")
    where = _lone_surrogate(data)
    if where is not None:
        raise BadRequest(400, f"Invalid request ({where}): text must be valid Unicode (a lone surrogate was found).", param=where)
    try:
        body = ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = _param(first["loc"])
        raise BadRequest(400, f"Invalid request{f' ({param})' if param else ''}: {first['msg']}", param=param) from None
    for name in UNSUPPORTED:
        if data.get(name) is not None:
            raise BadRequest(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    if body.stream:
        raise BadRequest(400, "streaming is not supported", param="stream", code="unsupported_parameter")
    if body.n not in (None, 1):
        raise BadRequest(400, "only n=1 is supported", param="n", code="unsupported_parameter")
    if len(body.stop_strings()) > 4 or "" in body.stop_strings():
        raise BadRequest(400, "'stop' takes 1 to 4 non-empty strings", param="stop")
    if body.logprobs:
        raise BadRequest(400, "logprobs are not returned by this server", param="logprobs", code="unsupported_parameter")
    return body, data["messages"]
