"""Eval specs: one declarative YAML per category under evals/tasks/, in the spirit of
lm-evaluation-harness task files. Code enters only through named functions (parser, scorer);
metrics are evaluate modules shipped under evals/metrics/. Every reference list declares its type
(reference_types.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qeforge.categories import CATEGORIES
from qeforge.curation.split import SPLITS
from qeforge.evaluation.reference_types import TYPES
from qeforge.hashing import file_sha256
from qeforge.locations import project_path

TASKS_DIR = project_path("evals/tasks")
METRICS_DIR = project_path("evals/metrics")


class EvalSpecError(ValueError):
    """An eval spec that cannot run: raised on load, before any model is touched."""


# Every key a spec may hold, per section: anything else is a typo or a setting nobody reads, and an error.
KEYS = {
    "": {"task", "metadata", "dataset", "prompt", "generation", "parser", "scorer", "metrics", "score",
         "report_columns", "targets"},
    "metadata": {"version"},
    "dataset": {"tune_split", "eval_split"},
    "generation": {"max_new_tokens"},  # decoding is greedy (generate.py): there is nothing to sample
    "scorer": {"function", "kwargs", "inputs", "input_types", "optional_inputs"},
    "metric": {"module", "predictions", "references", "reference_type", "per_example", "aggregate", "optional"},
    "score": {"column", "weights", "range"},
    "targets": {"quality_ratio"},
}
PROMPTS = ("chat",)  # chat: the system and user turns of `messages`, the recorded answer dropped


@dataclass(frozen=True)
class MetricSpec:
    module: str  # a directory under evals/metrics
    predictions: str  # "output", "parsed.<field>" or "metadata.<field>"
    references: tuple[str, ...]  # sources (references.py); the first one that converts wins
    reference_type: str | None  # what the references must be (reference_types.TYPES); required
    per_example: dict[str, str]  # evaluate result key -> column name
    aggregate: dict[str, str] = field(default_factory=dict)  # corpus-level result key -> name
    optional: bool = False  # no reference: this metric is left out of the score instead of the example


@dataclass(frozen=True)
class EvalSpec:
    task: str
    version: int
    tune_split: str
    eval_split: str
    prompt: str
    generation: dict
    parser: str | None
    scorer: dict | None
    metrics: tuple[MetricSpec, ...]
    score_column: str | None
    score_weights: dict[str, float]
    score_range: tuple[float, float]
    report_columns: tuple[str, ...]
    target_ratio: float
    digest: str  # content hash of the YAML: changes whenever the task changes

    @property
    def name(self) -> str:
        return f"{self.task}@v{self.version}"


def resolve(dotted: str):
    """'package.module:function' -> the function."""
    module, _, attr = dotted.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise EvalSpecError(f"cannot import {dotted!r}: {e}") from e


def load_spec(category: str, tasks_dir: Path = TASKS_DIR) -> EvalSpec:
    path = Path(tasks_dir) / f"{category}.yaml"
    if not path.exists():
        raise EvalSpecError(f"no eval spec for {category!r}: expected {path}")
    raw = yaml.safe_load(path.read_text())
    where = str(path)
    _check_keys(raw, where)
    try:
        data = raw["dataset"]
        score = raw["score"]
        metrics = tuple(
            MetricSpec(
                module=m["module"],
                predictions=m["predictions"],
                references=tuple(m["references"]) if isinstance(m["references"], list) else (m["references"],),
                reference_type=m.get("reference_type"),
                per_example=dict(m.get("per_example", {})),
                aggregate=dict(m.get("aggregate", {})),
                optional=bool(m.get("optional", False)),
            )
            for m in raw.get("metrics") or []
        )
        spec = EvalSpec(
            task=raw["task"],
            version=int(raw["metadata"]["version"]),
            tune_split=data["tune_split"],
            eval_split=data["eval_split"],
            prompt=raw["prompt"],
            generation=dict(raw.get("generation") or {}),
            parser=raw.get("parser"),
            scorer=raw.get("scorer"),
            metrics=metrics,
            score_column=score.get("column"),
            score_weights={k: float(v) for k, v in (score.get("weights") or {}).items()},
            score_range=tuple(score["range"]),
            report_columns=tuple(raw.get("report_columns") or ()),
            target_ratio=float(raw["targets"]["quality_ratio"]),
            digest=file_sha256(path)[:12],
        )
    except (KeyError, TypeError) as e:
        raise EvalSpecError(f"{where}: missing or malformed field {e}") from e
    _check(spec, where)
    return spec


def _check_keys(raw, where: str) -> None:
    if not isinstance(raw, dict):
        raise EvalSpecError(f"{where}: a spec is a mapping of the keys {sorted(KEYS[''])}")
    sections = [("", raw)] + [(k, raw[k]) for k in ("metadata", "dataset", "generation", "scorer", "score", "targets")
                              if isinstance(raw.get(k), dict)]
    sections += [("metric", m) for m in raw.get("metrics") or [] if isinstance(m, dict)]
    for section, mapping in sections:
        unknown = sorted(set(mapping) - KEYS[section])
        if unknown:
            place = f"`{section}`" if section else "the top level"
            raise EvalSpecError(f"{where}: unknown key(s) {unknown} in {place}; allowed: {sorted(KEYS[section])}")


def _check(spec: EvalSpec, where: str) -> None:
    from qeforge.evaluation.references import check_source

    if spec.prompt not in PROMPTS:
        raise EvalSpecError(f"{where}: prompt {spec.prompt!r} is not one of {PROMPTS}")
    for source in [s for m in spec.metrics for s in (m.predictions, *m.references)] + [
        s for sources in (spec.scorer or {}).get("inputs", {}).values() for s in sources
    ]:
        check_source(source, where, has_parser=spec.parser is not None)
    if spec.task not in CATEGORIES:
        raise EvalSpecError(f"{where}: task {spec.task!r} is not a category ({', '.join(CATEGORIES)})")
    for split in (spec.tune_split, spec.eval_split):
        if split not in SPLITS:
            raise EvalSpecError(f"{where}: split {split!r} is not one of {SPLITS}")
    if spec.tune_split == spec.eval_split:
        raise EvalSpecError(f"{where}: thresholds must be confirmed on a split other than the one they are tuned on")
    if (spec.score_column is None) == (not spec.score_weights):
        raise EvalSpecError(f"{where}: score needs exactly one of `column` or `weights`")
    if spec.score_weights and abs(sum(spec.score_weights.values()) - 1.0) > 1e-9:
        raise EvalSpecError(f"{where}: score weights sum to {sum(spec.score_weights.values())}, not 1")
    for m in spec.metrics:
        if not (METRICS_DIR / m.module / f"{m.module}.py").exists():
            raise EvalSpecError(f"{where}: metric module {m.module!r} not found under {METRICS_DIR}")
    scorer = spec.scorer or {}
    typed = [(f"metric {m.module!r} reference_type", m.reference_type) for m in spec.metrics]
    typed += [(f"scorer input {name!r} in input_types", (scorer.get("input_types") or {}).get(name))
              for name in scorer.get("inputs") or {}]
    for what, type_name in typed:
        if type_name not in TYPES:
            raise EvalSpecError(f"{where}: {what} is {type_name!r}; declare one of {sorted(TYPES)}")
    for dotted in filter(None, [spec.parser, scorer.get("function")]):
        resolve(dotted)

