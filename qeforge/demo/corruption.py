"""The broken lines a real ReasoningBank export contains, one function per kind.

Every kind except `duplicate_id` must be rejected by `validate_row` (or by
`json.loads`); a duplicate id is valid on its own and only the importer's
id/content-hash check can catch it.
"""

from __future__ import annotations

import json
import random

from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL


def _unit_vector(rng: random.Random, dim: int) -> list[float]:
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(v * v for v in values) ** 0.5
    return [round(v / norm, 6) for v in values]


def _with_embedding(row: dict, rng: random.Random, dim: int, declared: int, nan_at: int | None = None) -> dict:
    vector = _unit_vector(rng, dim)
    if nan_at is not None:
        vector[nan_at] = float("nan")
    return {**row, "embedding": vector, "embedding_model": EMBEDDING_MODEL, "embedding_dim": declared}


def _dumps(value) -> str:
    # allow_nan: NaN must reach the file as the bare token producers really write.
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


# kind -> (row, rng) -> raw line. Rows arrive complete and valid.
CORRUPTIONS = {
    "truncated_json": lambda row, rng: _dumps(row)[: max(20, int(len(_dumps(row)) * rng.uniform(0.3, 0.9)))],
    "json_array": lambda row, rng: _dumps([row["id"], row["task"], row["output"], row["quality"]]),
    "missing_task": lambda row, rng: _dumps({k: v for k, v in row.items() if k != "task"}),
    "empty_output": lambda row, rng: _dumps({**row, "output": "   "}),
    "quality_as_string": lambda row, rng: _dumps({**row, "quality": "high"}),
    "quality_above_one": lambda row, rng: _dumps({**row, "quality": 1.7}),
    "negative_confidence": lambda row, rng: _dumps({**row, "confidence": -0.2}),
    "unknown_outcome": lambda row, rng: _dumps({**row, "outcome": "done"}),
    "unknown_category": lambda row, rng: _dumps({**row, "category": "perf-testing"}),
    "nan_quality": lambda row, rng: _dumps({**row, "quality": float("nan")}),
    "nan_embedding": lambda row, rng: _dumps(_with_embedding(row, rng, EMBEDDING_DIM, EMBEDDING_DIM, rng.randrange(EMBEDDING_DIM))),
    "wrong_embedding_length": lambda row, rng: _dumps(_with_embedding(row, rng, EMBEDDING_DIM - 1, EMBEDDING_DIM)),
    # The id is swapped in later by the caller, once earlier rows have their ids.
    "duplicate_id": lambda row, rng: _dumps(row),
}

KINDS: tuple[str, ...] = tuple(CORRUPTIONS)

# The reason code validate_row gives for each kind (None: json.loads fails, or the row is valid).
EXPECTED_REASONS: dict[str, str | None] = {
    "truncated_json": None,
    "json_array": "not_an_object",
    "missing_task": "missing:task",
    "empty_output": "empty:output",
    "quality_as_string": "wrong_type:quality",
    "quality_above_one": "out_of_range:quality",
    "negative_confidence": "out_of_range:confidence",
    "unknown_outcome": "unknown_value:outcome",
    "unknown_category": "unknown_value:category",
    "nan_quality": "non_finite:quality",
    "nan_embedding": "non_finite:embedding",
    "wrong_embedding_length": "embedding_dim_mismatch",
    "duplicate_id": None,
}


def corrupt(kind: str, row: dict, rng: random.Random) -> str:
    return CORRUPTIONS[kind](row, rng)
