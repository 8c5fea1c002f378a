"""A deterministic, realistic synthetic ReasoningBank export (JSONL).

This is the data the pipeline is demonstrated and tested on, so it carries the
properties the pipeline exists to handle: unequal categories, rows without a
category, several producer models of different skill, duplicates and
near-duplicates with different scores, broken lines of every kind the importer
quarantines, and embeddings from two models (or none). Task content is real:
focal code with passing tests, line coverage measured by tracing, flaky tests
with ground-truth labels, and diffs with a planted defect.

Everything derives from (n, seed): no wall clock, no uuid4, no global RNG.
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from qeforge.categories import CATEGORIES
from qeforge.demo import code_review, flaky, line_coverage, test_generation
from qeforge.demo.corruption import KINDS as BROKEN_KINDS
from qeforge.demo.corruption import corrupt
from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL

__all__ = ["generate_demo_lines", "write_demo_jsonl", "BROKEN_KINDS", "CATEGORY_SHARES", "MODEL_SHARES"]

CATEGORY_SHARES: dict[str, float] = {
    "test-generation": 0.38,
    "coverage-analysis": 0.28,
    "flaky-detection": 0.21,
    "code-review": 0.13,
}
assert set(CATEGORY_SHARES) == set(CATEGORIES)

MODEL_SHARES: dict[str, float] = {
    "claude-sonnet-4-6": 0.55,
    "claude-opus-4-1": 0.10,
    "phi-4": 0.13,
    "qwen3:8b": 0.12,
    "llama3.1:8b": 0.10,
}

AGENTS = {
    "test-generation": "qe-test-generator",
    "coverage-analysis": "qe-coverage-analyzer",
    "flaky-detection": "qe-flaky-hunter",
    "code-review": "qe-code-reviewer",
}
MAKERS = {
    "test-generation": test_generation.make_example,
    "coverage-analysis": line_coverage.make_example,
    "flaky-detection": flaky.make_example,
    "code-review": code_review.make_example,
}

# Outcome odds by producer: the local models fail and half-finish more often.
OUTCOME_ODDS = {
    "claude": (("success", 0.82), ("partial", 0.07), ("failure", 0.07), ("skipped", 0.04)),
    "local": (("success", 0.58), ("partial", 0.16), ("failure", 0.20), ("skipped", 0.06)),
}

BROKEN_SHARE = 0.06
EXACT_DUP_SHARE = 0.05
NEAR_DUP_SHARE = 0.06
UNCATEGORISED_SHARE = 0.15
MINILM_SHARE = 0.30
NOMIC_SHARE = 0.08
NOMIC_MODEL = "nomic-ai/nomic-embed-text-v1.5"
BASE_TIME = datetime(2025, 1, 6, tzinfo=timezone.utc)
SPAN_DAYS = 120


def _weighted(rng: random.Random, pairs) -> str:
    names, weights = zip(*pairs)
    return rng.choices(names, weights=weights)[0]


def _quotas(total: int, shares: dict[str, float]) -> list[str]:
    """Exact per-category counts by largest remainder, so small demos keep the proportions."""
    raw = {k: total * v for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return [k for k, c in counts.items() for _ in range(c)]


def _metrics(rng: random.Random, model: str, outcome: str, task: str, output: str) -> dict:
    """Scores, counters and costs consistent with who produced the row and how it went."""
    local = not model.startswith("claude")
    if outcome == "success":
        quality = 0.58 + 0.42 * rng.betavariate(2.4, 1.2) if local else 0.73 + 0.27 * rng.betavariate(3.0, 1.0)
        confidence = 0.55 + 0.45 * rng.betavariate(2.2, 1.2) if local else 0.70 + 0.30 * rng.betavariate(3.5, 1.0)
        usage = min(30, int(rng.expovariate(1 / 14.0)))
        success_count = round(usage * rng.uniform(0.75, 1.0))
    elif outcome == "partial":
        quality, confidence = rng.uniform(0.4, 0.75), rng.uniform(0.4, 0.85)
        usage = min(30, int(rng.expovariate(1 / 4.0)))
        success_count = round(usage * rng.uniform(0.3, 0.7))
    elif outcome == "failure":
        # Failing agents are often confidently wrong; that is why the gate checks quality too.
        quality, confidence = rng.uniform(0.02, 0.35), rng.uniform(0.2, 0.95)
        usage = min(30, int(rng.expovariate(1 / 3.0)))
        success_count = round(usage * rng.uniform(0.0, 0.3))
    else:
        quality, confidence = rng.uniform(0.0, 0.2), rng.uniform(0.1, 0.5)
        usage = min(30, int(rng.expovariate(1 / 2.0)))
        success_count = 0
    reward = None
    if rng.random() < 0.85:
        reward = round(max(-1.0, min(1.0, 2 * quality - 1 + rng.gauss(0, 0.1))), 3)
    input_tokens = 120 + len(task) // 4 + rng.randint(0, 40)
    output_tokens = max(4, len(output) // 4 + rng.randint(-5, 30))
    per_token, overhead = (42.0, 250.0) if local else (18.0, 700.0)
    latency = (overhead + per_token * output_tokens + 0.3 * input_tokens) * math.exp(rng.gauss(0, 0.25))
    return {
        "quality": round(quality, 3),
        "confidence": round(confidence, 3),
        "usage_count": usage,
        "success_count": min(success_count, usage),
        "reward": reward,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "latency_ms": round(latency, 1),
    }


class _Row:
    """A row being assembled; ids and duplicate links are resolved after ordering."""

    def __init__(self, fields: dict, when: float, *, category: str, spec_seed: int, kind: str | None = None, original: _Row | None = None):
        self.fields, self.when, self.kind, self.original = fields, when, kind, original
        self.category, self.spec_seed = category, spec_seed
        self.id = ""


def _build(rng: random.Random, category: str, spec_seed: int, style_seed: int, model: str | None = None) -> dict:
    model = model or _weighted(rng, MODEL_SHARES.items())
    family = "claude" if model.startswith("claude") else "local"
    outcome = _weighted(rng, OUTCOME_ODDS[family])
    example = MAKERS[category](spec_seed, style_seed)
    output = example.outputs[outcome]
    fields = {
        "task": example.task,
        "output": output,
        "category": category,
        "domain": category,
        "agent": AGENTS[category],
        "model": model,
        "outcome": outcome,
        **_metrics(rng, model, outcome, example.task, output),
        "language": "python",
        "framework": "pytest",
        "metadata": example.metadata,
    }
    if rng.random() < UNCATEGORISED_SHARE:
        # Older fleet versions recorded neither category nor domain; the classifier has to read the text.
        del fields["category"], fields["domain"]
        if rng.random() < 0.4:
            fields["agent"] = "qe-fleet-commander"
    return fields


def _cosmetic(task: str, rng: random.Random) -> str:
    """Same task after copy-paste: whitespace and prompt-case changes only (code untouched)."""
    first, sep, rest = task.partition("\n")
    choice = rng.randrange(3)
    if choice == 0 and "`" not in first:
        first = first.upper() if rng.random() < 0.3 else first.lower()
    elif choice == 1:
        first = "  " + first.replace(" ", "  ", 2)
    else:
        rest = rest + "\n\n"
    return first + sep + rest.replace("```\n", "```  \n", 1)


def _rescore(fields: dict, rng: random.Random) -> dict:
    """A duplicate was scored separately: nearby but different quality and usage."""
    out = dict(fields)
    out["quality"] = round(min(1.0, max(0.0, fields["quality"] + rng.uniform(-0.12, 0.08))), 3)
    out["confidence"] = round(min(1.0, max(0.0, fields["confidence"] + rng.uniform(-0.1, 0.1))), 3)
    out["usage_count"] = min(30, max(0, fields["usage_count"] + rng.randint(-4, 3)))
    out["success_count"] = min(out["usage_count"], fields["success_count"])
    return out


def _timestamp(when: float) -> str:
    return (BASE_TIME + timedelta(seconds=round(when))).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_demo_lines(n: int = 3000, seed: int = 0, *, with_embeddings: bool = True) -> list[str]:
    """`n` JSONL lines (no trailing newline); the same (n, seed) always gives the same bytes."""
    if n <= 0:
        return []
    rng = random.Random(f"qeforge-demo:{seed}")
    span = SPAN_DAYS * 86400.0
    n_broken = max(round(BROKEN_SHARE * n), min(len(BROKEN_KINDS), n // 10))
    n_exact = round(EXACT_DUP_SHARE * n)
    n_near = round(NEAR_DUP_SHARE * n)
    n_base = max(1, n - n_broken - n_exact - n_near)

    categories = _quotas(n_base, CATEGORY_SHARES)
    rng.shuffle(categories)
    base = []
    for category in categories:
        spec_seed = rng.getrandbits(64)
        fields = _build(rng, category, spec_seed, rng.getrandbits(64))
        base.append(_Row(fields, rng.uniform(0, span), category=category, spec_seed=spec_seed))
    rows = list(base)

    for _ in range(n_exact):
        original = rng.choice(base)
        fields = _rescore(original.fields, rng)
        if rng.random() < 0.6:
            fields["task"] = _cosmetic(fields["task"], rng)
        when = original.when + rng.uniform(3600, 20 * 86400)
        rows.append(_Row(fields, when, category=original.category, spec_seed=original.spec_seed, original=original))

    for _ in range(n_near):
        original = rng.choice(base)
        # Same spec seed, new style seed: same behaviour, renamed identifiers and reworded prompt.
        for _attempt in range(5):
            fields = _build(rng, original.category, original.spec_seed, rng.getrandbits(64), model=original.fields["model"])
            if fields["task"] != original.fields["task"]:
                break
        when = original.when + rng.uniform(3600, 30 * 86400)
        rows.append(_Row(fields, when, category=original.category, spec_seed=original.spec_seed, original=original))

    kinds = [BROKEN_KINDS[i % len(BROKEN_KINDS)] for i in range(n_broken)]
    rng.shuffle(kinds)
    for kind in kinds:
        category = _weighted(rng, CATEGORY_SHARES.items())
        spec_seed = rng.getrandbits(64)
        fields = _build(rng, category, spec_seed, rng.getrandbits(64))
        # Duplicate-id rows must come after the row whose id they reuse.
        when = rng.uniform(0.2 * span, span) if kind == "duplicate_id" else rng.uniform(0, span)
        rows.append(_Row(fields, when, category=category, spec_seed=spec_seed, kind=kind))

    rows.sort(key=lambda r: r.when)
    for position, row in enumerate(rows):
        row.id = f"demo-{seed:03d}-{position:06d}" if seed else f"demo-{position:06d}"

    embeddings = _embeddings(rows, seed, with_embeddings)
    lines = []
    for position, row in enumerate(rows):
        fields = {"id": row.id, **row.fields, "created_at": _timestamp(row.when)}
        if row.original is not None:
            fields["metadata"] = {**fields["metadata"], "demo_duplicate_of": row.original.id}
        fields.update(embeddings.get(position, {}))
        fields = {k: v for k, v in _ordered(fields).items() if v is not None}
        if row.kind is None:
            lines.append(json.dumps(fields, ensure_ascii=False))
            continue
        kind_rng = random.Random(f"qeforge-demo-broken:{seed}:{position}")
        if row.kind == "duplicate_id":
            earlier = [r for r in rows[:position] if r.kind is None] or [r for r in rows if r is not row]
            fields["id"] = kind_rng.choice(earlier).id
        lines.append(corrupt(row.kind, fields, kind_rng))
    return lines


FIELD_ORDER = (
    "id", "task", "output", "category", "domain", "agent", "model", "outcome", "quality", "confidence",
    "usage_count", "success_count", "reward", "input_tokens", "output_tokens", "latency_ms", "language",
    "framework", "embedding", "embedding_model", "embedding_dim", "created_at", "metadata",
)


def _ordered(fields: dict) -> dict:
    return {k: fields.get(k) for k in FIELD_ORDER}


def _embeddings(rows: list[_Row], seed: int, enabled: bool) -> dict[int, dict]:
    """Which valid rows carry a vector, and the vector: real MiniLM, or a stand-in 768-d one."""
    if not enabled:
        return {}
    rng = random.Random(f"qeforge-demo-embeddings:{seed}")
    minilm, nomic = [], []
    for position, row in enumerate(rows):
        draw = rng.random()
        if row.kind is not None:
            continue
        if draw < MINILM_SHARE:
            minilm.append(position)
        elif draw < MINILM_SHARE + NOMIC_SHARE:
            nomic.append(position)
    out: dict[int, dict] = {}
    if minilm:
        from qeforge.embedding import embed_texts

        # Length-sorted batches pad less; task listings are long, so this is most of the cost.
        texts = sorted({rows[p].fields["task"] for p in minilm}, key=lambda t: (len(t), t))
        vectors = embed_texts(texts)
        by_text = {t: [round(float(x), 6) for x in v] for t, v in zip(texts, vectors)}
        for p in minilm:
            out[p] = {"embedding": by_text[rows[p].fields["task"]], "embedding_model": EMBEDDING_MODEL, "embedding_dim": EMBEDDING_DIM}
    if nomic:
        gen = np.random.default_rng(rng.getrandbits(64))
        matrix = gen.standard_normal((len(nomic), 768))
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        for p, v in zip(nomic, matrix):
            out[p] = {"embedding": [round(float(x), 6) for x in v], "embedding_model": NOMIC_MODEL, "embedding_dim": 768}
    return out


def write_demo_jsonl(path, n: int = 3000, seed: int = 0, *, with_embeddings: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = generate_demo_lines(n, seed, with_embeddings=with_embeddings)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
