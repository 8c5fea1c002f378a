"""Score outputs with an eval spec: parse, run the spec's evaluate modules and scorer, and
combine the per-example columns into the one `score` the quality ratio and routing use.

The same function scores the adapter, the base model and Claude's recorded answers, so all
three are measured by identical code. One bad row cannot take a category down: a metric module that
raises on a batch is run again one example at a time, and the examples it still fails on become
`unscorable` (`metric_error:<module>`; a scorer function's, `metric_error:<function>`).
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from qeforge.evaluation.reference_types import as_prediction
from qeforge.evaluation.references import Truth, reference_name, resolve_truths
from qeforge.evaluation.spec import METRICS_DIR, EvalSpec, EvalSpecError, resolve


@functools.lru_cache(maxsize=None)
def load_metric(module: str):
    import evaluate

    # A local module directory: no Hub call. (Offline mode is the entry points' choice, and the Hub reads
    # HF_HUB_OFFLINE when imported, so setting it here, after `import evaluate`, changed nothing.)
    return evaluate.load(str(METRICS_DIR / module))


def _field(name: str, output: str, example: dict, parsed: dict):
    """A prediction: the answer, a parsed field of it, or a metadata field."""
    if name == "output":
        return output
    source, _, key = name.partition(".")
    metadata = example.get("metadata") if isinstance(example.get("metadata"), dict) else {}
    table = {"parsed": parsed, "metadata": metadata}.get(source)
    if table is None or not key:
        raise EvalSpecError(f"prediction {name!r}: use output, parsed.<field> or metadata.<field>")
    return table.get(key)


def _compute(module: str, predictions: list, references: list) -> tuple[dict, list[int]]:
    """The module's result over the examples it can score, and the positions of those it cannot.

    Any exception counts: evaluate modules raise whatever their features or code raise (ValueError on
    a format, OverflowError on a line number past int64, TypeError, ...), and the rest of the batch
    deserves its scores."""
    metric = load_metric(module)
    try:
        return metric.compute(predictions=predictions, references=references), []
    except Exception:
        failed = []
        for k, (p, r) in enumerate(zip(predictions, references)):
            try:
                metric.compute(predictions=[p], references=[r])
            except Exception:
                failed.append(k)
        keep = sorted(set(range(len(predictions))) - set(failed))
        if not keep:
            return {}, failed
        return metric.compute(predictions=[predictions[k] for k in keep], references=[references[k] for k in keep]), failed


def _scorer_row(scorer, output, inputs: dict, kwargs: dict) -> dict | None:
    """One example's scorer row, or None when the scorer raises on it (the example becomes unscorable)."""
    try:
        return scorer(output, inputs, **kwargs)
    except Exception:  # a scorer's own bug on one odd example must not cost the category its evaluation
        return None


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
    reasons = [t.unscorable for t in truths]  # grows as metrics fail on examples
    columns: dict[str, list] = {}
    aggregates: dict[str, float] = {}
    for m in spec.metrics:
        name = reference_name(m.references)
        # An optional metric may lack a reference; an example an earlier metric failed on is out.
        rows = [i for i in range(n) if reasons[i] is None and truths[i].sources[name] != "none"]
        predictions = [as_prediction(m.reference_type, _field(m.predictions, outputs[i], examples[i], parsed[i])) for i in rows]
        result, failed = _compute(m.module, predictions, [truths[i].values[name] for i in rows]) if rows else ({}, [])
        for k in failed:
            reasons[rows[k]] = f"metric_error:{m.module}"
        rows = [i for i in rows if reasons[i] is None]
        for key, column in m.per_example.items():
            columns[column] = [math.nan] * n
            for i, value in zip(rows, result.get(key, [])):
                columns[column][i] = value
        for key, agg in m.aggregate.items():
            aggregates[agg] = float(result.get(key, math.nan))
    if spec.scorer:
        scorer, kwargs = resolve(spec.scorer["function"]), dict(spec.scorer.get("kwargs") or {})
        inputs, todo = list(spec.scorer.get("inputs") or {}), [i for i in range(n) if reasons[i] is None]
        # Scorers that run sandboxes spend their time in subprocesses: threads keep the cores busy.
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            rows = list(pool.map(lambda i: _scorer_row(scorer, outputs[i], {k: truths[i].values[k] for k in inputs}, kwargs), todo))
        for i, row in zip(todo, rows):
            if row is None:
                reasons[i] = f"metric_error:{spec.scorer['function'].rpartition(':')[2]}"
        done = [(i, row) for i, row in zip(todo, rows) if row is not None]
        for key in done[0][1] if done else ():
            columns[key] = [None] * n
            for i, row in done:
                columns[key][i] = row[key]
    frame = pd.DataFrame({
        "id": [e["id"] for e in examples],
        "output": outputs,
        "scorable": [r is None for r in reasons],
        "unscorable_reason": [r or "" for r in reasons],
        **{f"source_{k}": [t.sources[k] for t in truths] for k in (truths[0].sources if truths else ())},
        **{f"rejected_{k}": [t.rejected[k] for t in truths] for k in (truths[0].rejected if truths else ())},
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
