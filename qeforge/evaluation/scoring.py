"""Score outputs with an eval spec: parse, run the spec's evaluate modules and scorer, and
combine the per-example columns into the one `score` the quality ratio and routing use.

The same function scores the adapter, the base model and Claude's recorded answers, so all
three are measured by identical code.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from qeforge.evaluation.spec import METRICS_DIR, EvalSpec, EvalSpecError, resolve


@functools.lru_cache(maxsize=None)
def load_metric(module: str):
    import evaluate

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local modules only: the Hub is unreachable
    return evaluate.load(str(METRICS_DIR / module))


def _field(name: str, output: str, example: dict, parsed: dict):
    if name == "output":
        return output
    if name == "reference":
        return example["reference"]
    source, _, key = name.partition(".")
    table = {"parsed": parsed, "metadata": example["metadata"]}.get(source)
    if table is None or not key:
        raise EvalSpecError(f"field {name!r}: use output, reference, parsed.<field> or metadata.<field>")
    return table.get(key)


def _first_present(names, output, example, parsed):
    for name in names:
        value = _field(name, output, example, parsed)
        if value is not None or name == names[-1]:
            return value
    return None


def _as_label(value):
    # A null label (e.g. no cause for a deterministic test) compares as the word the answers use.
    return "none" if value is None else value


def score_outputs(spec: EvalSpec, outputs: list[str], examples: list[dict], *, workers: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-example scores (one row per output, in order) and corpus-level aggregates.

    `examples` are dicts with `id`, `metadata` (dict) and `reference` (the recorded answer).
    """
    if len(outputs) != len(examples):
        raise ValueError(f"{len(outputs)} outputs for {len(examples)} examples")
    parse = resolve(spec.parser) if spec.parser else (lambda _: {})
    parsed = [parse(o) for o in outputs]
    columns: dict[str, list] = {}
    aggregates: dict[str, float] = {}
    for m in spec.metrics:
        predictions = [_as_label(_field(m.predictions, o, e, p)) for o, e, p in zip(outputs, examples, parsed)]
        references = [_as_label(_first_present(m.references, o, e, p)) for o, e, p in zip(outputs, examples, parsed)]
        result = load_metric(m.module).compute(predictions=predictions, references=references) if outputs else {}
        for key, column in m.per_example.items():
            columns[column] = list(result.get(key, []))
        for key, name in m.aggregate.items():
            aggregates[name] = float(result.get(key, float("nan")))
    if spec.scorer:
        scorer, kwargs = resolve(spec.scorer["function"]), dict(spec.scorer.get("kwargs") or {})
        # Scorers that run sandboxes spend their time in subprocesses: threads keep the cores busy.
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            rows = list(pool.map(lambda pair: scorer(pair[0], pair[1]["metadata"], **kwargs), zip(outputs, examples)))
        for key in rows[0] if rows else ():
            columns[key] = [r[key] for r in rows]
    frame = pd.DataFrame({"id": [e["id"] for e in examples], "output": outputs, **columns})
    if spec.score_column:
        frame["score"] = frame[spec.score_column].astype(float) if len(frame) else pd.Series(dtype=float)
    else:
        frame["score"] = sum(w * frame[c].astype(float) for c, w in spec.score_weights.items()) if len(frame) else pd.Series(dtype=float)
    return frame, aggregates
