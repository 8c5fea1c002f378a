"""The trajectory schema and the validation every imported row goes through.

A row is what the fleet records for one task (agentic-qe's QEPattern /
captured_experiences, ruvllm's Trajectory). `validate_row` either returns the
normalized row or a stable reason code; reasons are what the quarantine table
and the import summary count.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

from qeforge.categories import CATEGORIES, OUTCOMES
from qeforge.hashing import text_sha256

# Embedding sizes seen in the wild: MiniLM 384, nomic/bge-base 768, bge-large/e5-large 1024.
EMBEDDING_DIMS: tuple[int, ...] = (384, 768, 1024)

# One step of a step-by-step trajectory (agentic-qe's trajectory_steps, ruvllm's TrajectoryStep).
STEP_TYPE = pa.struct(
    [
        pa.field("action", pa.string()),
        pa.field("outcome", pa.string()),
        pa.field("quality", pa.float64()),
        pa.field("duration_ms", pa.float64()),
        pa.field("tokens", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("result", pa.string()),  # the step's result data as JSON text
    ]
)

TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("agent", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("quality", pa.float64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("usage_count", pa.int64()),
        pa.field("success_count", pa.int64()),
        pa.field("reward", pa.float64()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("language", pa.string()),
        pa.field("framework", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("embedding_model", pa.string()),
        pa.field("embedding_dim", pa.int32()),
        # What the stored vector embeds: "task" (the task text) or the producer's own text, e.g.
        # agentic-qe's "name + description + tags". Curation reuses a vector only for the task.
        pa.field("embedding_text", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        # A newer updated_at for a stored id is an update (the old version goes to history), not a conflict.
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("steps", pa.list_(STEP_TYPE)),  # step-by-step trajectories, in order
        pa.field("metadata", pa.string()),  # JSON object as text
        pa.field("source", pa.string()),  # which import brought the row in
        pa.field("content_hash", pa.string()),  # tells a re-import from a conflicting id
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # sha256 of the raw text: re-import adds nothing
        pa.field("row_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Bounds an import enforces, so no value can overflow a column on write or on read back.
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
# Timestamps from the Unix epoch to 2100: older or later values are producer bugs (and year 1 at
# UTC+14 underflows datetime when read back as UTC).
TIME_RANGE = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))

REQUIRED_TEXT = ("id", "task", "output", "model")
OPTIONAL_TEXT = ("domain", "agent", "language", "framework")
UNIT_RANGE = ("quality", "confidence")  # required, 0..1
COUNTS = ("usage_count", "success_count", "input_tokens", "output_tokens")


class InvalidRow(ValueError):
    def __init__(self, reason: str, detail: str, row_id: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.row_id = row_id


def is_valid_text(value: str) -> bool:
    """False for text with lone surrogates ("\\ud800" in JSON): not Unicode, so not storable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(row: dict, name: str, *, required: bool) -> float | None:
    value = row.get(name)
    if value is None:
        if required:
            raise InvalidRow(f"missing:{name}", f"{name} is required")
        return None
    # bool is an int subclass in Python; a True quality is a producer bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRow(f"wrong_type:{name}", f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > INT64_MAX:  # JSON integers are unbounded; float() would overflow
        raise InvalidRow(f"out_of_range:{name}", f"{name} is beyond the 64-bit range")
    if not math.isfinite(value):
        raise InvalidRow(f"non_finite:{name}", f"{name} is {value}")
    return float(value)


def _count(row: dict, name: str) -> int | None:
    value = _number(row, name, required=False)
    if value is None:
        return None
    if value != int(value) or not 0 <= value <= INT64_MAX:
        raise InvalidRow(f"out_of_range:{name}", f"{name} must be a non-negative 64-bit integer, got {value}")
    return int(value)


def _text(row: dict, name: str, *, required: bool) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise InvalidRow(f"missing:{name}", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRow(f"wrong_type:{name}", f"{name} must be a string, got {type(value).__name__}")
    if not is_valid_text(value):
        raise InvalidRow(f"invalid_text:{name}", f"{name} contains a lone surrogate (not valid Unicode)")
    if required and not value.strip():
        raise InvalidRow(f"empty:{name}", f"{name} is empty")
    return value


def _timestamp(value: Any, name: str = "created_at") -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRow(f"wrong_type:{name}", f"{name} must be ISO-8601 text or epoch seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidRow(f"non_finite:{name}", f"{name} is {value}")
        # agentic-qe writes epoch milliseconds in some tables; 1e11 s is the year 5138.
        seconds = value / 1000 if value > 1e11 else value
        if not TIME_RANGE[0].timestamp() <= seconds < TIME_RANGE[1].timestamp():
            raise InvalidRow(f"out_of_range:{name}", f"{name} {value} is outside {TIME_RANGE[0]:%Y}..{TIME_RANGE[1]:%Y}")
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRow(f"wrong_type:{name}", f"cannot parse timestamp {value!r}") from None
        try:
            parsed = parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except OverflowError:
            parsed = TIME_RANGE[0] - timedelta(days=1)  # beyond datetime itself: certainly out of range
        if not TIME_RANGE[0] <= parsed < TIME_RANGE[1]:
            raise InvalidRow(f"out_of_range:{name}", f"{name} {value!r} is outside {TIME_RANGE[0]:%Y}..{TIME_RANGE[1]:%Y}")
        return parsed
    raise InvalidRow(f"wrong_type:{name}", f"{name} must be ISO-8601 text or epoch seconds")


def _steps(value: Any) -> list[dict] | None:
    """Steps in order: each an object with `action` and `outcome`; the other step fields are optional."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        raise InvalidRow("wrong_type:steps", "steps must be a list of objects")
    steps = []
    for step in value:
        out = {name: _text(step, name, required=True) for name in ("action", "outcome")}
        out["error"] = _text(step, "error", required=False)
        result = step.get("result")
        out["result"] = None if result is None else result if isinstance(result, str) else json.dumps(result, sort_keys=True)
        for name in ("quality", "duration_ms"):
            out[name] = _number(step, name, required=False)
        tokens = _count(step, "tokens")
        out["tokens"] = tokens
        if out["quality"] is not None and not 0.0 <= out["quality"] <= 1.0:
            raise InvalidRow("out_of_range:steps", f"step quality must be in [0, 1], got {out['quality']}")
        steps.append(out)
    return steps


def _embedding(row: dict) -> tuple[list[float] | None, str | None, int | None]:
    vector = row.get("embedding")
    if vector is None:
        return None, None, None
    if not isinstance(vector, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
    ):
        raise InvalidRow("wrong_type:embedding", "embedding must be a list of numbers")
    if not all(isinstance(x, int) or math.isfinite(x) for x in vector):
        raise InvalidRow("non_finite:embedding", "embedding contains NaN or inf")
    if any(abs(x) > FLOAT32_MAX for x in vector):  # stored as float32: 1e39 would become inf
        raise InvalidRow("out_of_range:embedding", "embedding values exceed the float32 range")
    declared = row.get("embedding_dim")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        raise InvalidRow("wrong_type:embedding_dim", "embedding_dim must be an integer")
    dim = declared if declared is not None else len(vector)
    if len(vector) != dim or dim not in EMBEDDING_DIMS:
        raise InvalidRow(
            "embedding_dim_mismatch",
            f"embedding has {len(vector)} values, declared {declared}, allowed {EMBEDDING_DIMS}",
        )
    model = _text(row, "embedding_model", required=False) or "unknown"
    return [float(x) for x in vector], model, dim


def _embedding_text(row: dict) -> str | None:
    if row.get("embedding") is None:
        return None
    return _text(row, "embedding_text", required=False) or "task"


def validate_row(row: Any) -> dict:
    """Return the row normalized to TRAJECTORY_SCHEMA (minus source/content_hash) or raise InvalidRow."""
    if not isinstance(row, dict):
        raise InvalidRow("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    out: dict[str, Any] = {}
    for name in REQUIRED_TEXT:
        out[name] = _text(row, name, required=True)
    for name in OPTIONAL_TEXT:
        out[name] = _text(row, name, required=False) or ""

    category = _text(row, "category", required=False)
    if category is not None and category not in CATEGORIES:
        raise InvalidRow("unknown_value:category", f"category {category!r} is not one of {CATEGORIES}")
    out["category"] = category or None

    outcome = _text(row, "outcome", required=True)
    if outcome not in OUTCOMES:
        raise InvalidRow("unknown_value:outcome", f"outcome {outcome!r} is not one of {OUTCOMES}")
    out["outcome"] = outcome

    for name in UNIT_RANGE:
        value = _number(row, name, required=True)
        if not 0.0 <= value <= 1.0:
            raise InvalidRow(f"out_of_range:{name}", f"{name} must be in [0, 1], got {value}")
        out[name] = value
    reward = _number(row, "reward", required=False)
    if reward is not None and not -1.0 <= reward <= 1.0:
        raise InvalidRow("out_of_range:reward", f"reward must be in [-1, 1], got {reward}")
    out["reward"] = reward
    for name in COUNTS:
        out[name] = _count(row, name)
    out["usage_count"] = out["usage_count"] or 0
    out["success_count"] = out["success_count"] or 0
    if out["success_count"] > out["usage_count"]:
        raise InvalidRow("out_of_range:success_count", "success_count exceeds usage_count")
    latency = _number(row, "latency_ms", required=False)
    if latency is not None and latency < 0:
        raise InvalidRow("out_of_range:latency_ms", f"latency_ms must be >= 0, got {latency}")
    out["latency_ms"] = latency

    out["embedding"], out["embedding_model"], out["embedding_dim"] = _embedding(row)
    out["embedding_text"] = _embedding_text(row)
    out["created_at"] = _timestamp(row.get("created_at"))
    out["updated_at"] = _timestamp(row.get("updated_at"), "updated_at")
    out["steps"] = _steps(row.get("steps"))
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRow("wrong_type:metadata", "metadata must be a JSON object")
    out["metadata"] = json.dumps(metadata or {}, sort_keys=True, ensure_ascii=False)
    if not is_valid_text(out["metadata"]):
        raise InvalidRow("invalid_text:metadata", "metadata contains a lone surrogate (not valid Unicode)")
    return out


def content_hash(row: dict) -> str:
    """Hash of a validated row's content, independent of key order and import source. Absent (None)
    fields are left out, so a field added to the schema later does not change the hash of old rows."""
    canonical = {k: v for k, v in row.items() if k not in ("source", "content_hash") and v is not None}
    text = json.dumps(canonical, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def raw_key(raw: str) -> str:
    return text_sha256(raw)
