"""Score outputs with an eval spec: parse, run the spec's evaluate modules and scorer, and
combine the per-example columns into the one `score` the quality ratio and routing use.

The same function scores the adapter, the base model and Claude's recorded answers, so all
three are measured by identical code.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from qeforge.evaluation.references import Truth, reference_name, resolve_truths
from qeforge.evaluation.spec import METRICS_DIR, EvalSpec, EvalSpecError, resolve


@functools.lru_cache(maxsize=None)
def load_metric(module: str):
    import evaluate

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local modules only: the Hub is unreachable
    return evaluate.load(str(METRICS_DIR / module))


def _field(name: str, output: str, example: dict, parsed: dict):
    """A prediction: the answer, a parsed field of it, or a metadata field."""
    if name == "output":
        return output
    source, _, key = name.partition(".")
    table = {"parsed": parsed, "metadata": example.get("metadata") or {}}.get(source)
    if table is None or not key:
        raise EvalSpecError(f"prediction {name!r}: use output, parsed.<field> or metadata.<field>")
    return table.get(key)


def _as_label(value):
    # A null label (e.g. no cause for a deterministic test) compares as the word the answers use.
    return "none" if value is None else value


def _identity(value):
    return value


def _weighted_score(frame: pd.DataFrame, weights: dict[str, float]) -> pd.Series:
    """Weighted mean over the columns an example has: an optional metric without a reference
    (NaN) drops out and the other weights are renormalized; no column at all -> NaN."""
    num = sum(w * frame[c].astype(float).fillna(0.0) for c, w in weights.items())
    den = sum(w * frame[c].notna() for c, w in weights.items())
    return (num / den.where(den > 0)).astype(float)


def score_outputs(spec: EvalSpec, outputs: list[str], examples: list[dict], *, truths: list[Truth] | None = None,
                  workers: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-example scores (one row per output, in order) and corpus-level aggregates.

    `examples` are dicts with `id`, `task` (the user turn), `metadata` (dict) and `reference` (the
    recorded answer). `truths` (references.resolve_truths) can be passed in when the same examples
    are scored for several models. Unscorable examples get `scorable` False, their reason, and NaN
    scores; they never raise.
    """
    if len(outputs) != len(examples):
        raise ValueError(f"{len(outputs)} outputs for {len(examples)} examples")
    truths = truths if truths is not None else resolve_truths(spec, examples, workers=workers)
    n = len(examples)
    parse = resolve(spec.parser) if spec.parser else (lambda output, task="": {})
    parsed = [parse(o, e.get("task", "")) for o, e in zip(outputs, examples)]
    scorable = [i for i, t in enumerate(truths) if t.unscorable is None]
    columns: dict[str, list] = {}
    aggregates: dict[str, float] = {}
    for m in spec.metrics:
        name, norm = reference_name(m.references), resolve(m.normalize) if m.normalize else _identity
        rows = [i for i in scorable if truths[i].sources[name] != "none"]  # an optional metric may lack one
        predictions = [norm(_as_label(_field(m.predictions, outputs[i], examples[i], parsed[i]))) for i in rows]
        references = [norm(_as_label(truths[i].values[name])) for i in rows]
        result = load_metric(m.module).compute(predictions=predictions, references=references) if rows else {}
        for key, column in m.per_example.items():
            columns[column] = [math.nan] * n
            for i, value in zip(rows, result.get(key, [])):
                columns[column][i] = value
        for key, agg in m.aggregate.items():
            aggregates[agg] = float(result.get(key, math.nan))
    if spec.scorer:
        scorer, kwargs = resolve(spec.scorer["function"]), dict(spec.scorer.get("kwargs") or {})
        inputs = list(spec.scorer.get("inputs") or {})
        # Scorers that run sandboxes spend their time in subprocesses: threads keep the cores busy.
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            rows = list(pool.map(lambda i: scorer(outputs[i], {k: truths[i].values[k] for k in inputs}, **kwargs), scorable))
        for key in rows[0] if rows else ():
            columns[key] = [None] * n
            for i, row in zip(scorable, rows):
                columns[key][i] = row[key]
    frame = pd.DataFrame({
        "id": [e["id"] for e in examples],
        "output": outputs,
        "scorable": [t.unscorable is None for t in truths],
        "unscorable_reason": [t.unscorable or "" for t in truths],
        **{f"source_{k}": [t.sources[k] for t in truths] for k in (truths[0].sources if truths else ())},
        **columns,
    })
    for column in [spec.score_column] if spec.score_column else list(spec.score_weights):
        if column not in frame:  # every example unscorable: the scorer never ran
            frame[column] = math.nan
    if not len(frame):
        frame["score"] = pd.Series(dtype=float)
    elif spec.score_column:
        frame["score"] = pd.to_numeric(frame[spec.score_column], errors="coerce").astype(float)
    else:
        frame["score"] = _weighted_score(frame, spec.score_weights)
    frame.loc[~frame["scorable"], "score"] = math.nan
    return frame, aggregates
