"""A request body as every protocol layer reads it: size limit, JSON, Unicode, then its schema.

Every refusal is a BadRequest with an HTTP status (400, or 413 for a body over the limit) and the
field it names, so bad input never reaches the engine as something that could fail with a 500.
"""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError

# Phi-4's 16k-token context is about 64 KiB of text; 4 MiB leaves room for JSON escaping and many
# turns while a 20 MB body is refused before it is read.
DEFAULT_MAX_BODY_BYTES = 4 << 20


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


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object whose strings all encode, or BadRequest."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise BadRequest(400, "We could not parse the JSON body of your request: it is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "The request body must be a JSON object.")
    where = _lone_surrogate(data)
    if where is not None:
        raise BadRequest(400, f"Invalid request ({where}): text must be valid Unicode (a lone surrogate was found).", param=where)
    return data


def validate(model: type[BaseModel], data: dict):
    """`data` as `model`, or BadRequest naming the first field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = _param(first["loc"])
        raise BadRequest(400, f"Invalid request{f' ({param})' if param else ''}: {first['msg']}", param=param) from None


def finite(low: float, high: float):
    """An optional number in [low, high]; NaN and infinities refused."""
    return Field(None, ge=low, le=high, allow_inf_nan=False)
