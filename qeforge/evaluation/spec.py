"""Eval specs: one declarative YAML per category under evals/tasks/, in the spirit of
lm-evaluation-harness task files. Code enters only through named functions (parser, scorer);
metrics are evaluate modules shipped under evals/metrics/.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qeforge.categories import CATEGORIES
from qeforge.locations import project_path

TASKS_DIR = project_path("evals/tasks")
METRICS_DIR = project_path("evals/metrics")
SPLITS = ("train", "validation", "test")


class EvalSpecError(ValueError):
    """An eval spec that cannot run: raised on load, before any model is touched."""


@dataclass(frozen=True)
class MetricSpec:
    module: str  # a directory under evals/metrics
    predictions: str  # "output", "reference", "parsed.<field>" or "metadata.<field>"
    references: tuple[str, ...]  # first one present wins
    per_example: dict[str, str]  # evaluate result key -> column name
    aggregate: dict[str, str] = field(default_factory=dict)  # corpus-level result key -> name


@dataclass(frozen=True)
class EvalSpec:
    task: str
    version: int
    tune_split: str
    eval_split: str
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
    try:
        data = raw["dataset"]
        score = raw["score"]
        metrics = tuple(
            MetricSpec(
                module=m["module"],
                predictions=m["predictions"],
                references=tuple(m["references"]) if isinstance(m["references"], list) else (m["references"],),
                per_example=dict(m.get("per_example", {})),
                aggregate=dict(m.get("aggregate", {})),
            )
            for m in raw.get("metrics") or []
        )
        spec = EvalSpec(
            task=raw["task"],
            version=int(raw["metadata"]["version"]),
            tune_split=data["tune_split"],
            eval_split=data["eval_split"],
            generation=dict(raw.get("generation") or {}),
            parser=raw.get("parser"),
            scorer=raw.get("scorer"),
            metrics=metrics,
            score_column=score.get("column"),
            score_weights={k: float(v) for k, v in (score.get("weights") or {}).items()},
            score_range=tuple(score["range"]),
            report_columns=tuple(raw.get("report_columns") or ()),
            target_ratio=float(raw["targets"]["quality_ratio"]),
            digest=hashlib.sha256(path.read_bytes()).hexdigest()[:12],
        )
    except (KeyError, TypeError) as e:
        raise EvalSpecError(f"{where}: missing or malformed field {e}") from e
    _check(spec, where)
    return spec


def _check(spec: EvalSpec, where: str) -> None:
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
    for dotted in filter(None, [spec.parser, (spec.scorer or {}).get("function")]):
        resolve(dotted)


def load_specs() -> dict[str, EvalSpec]:
    return {c: load_spec(c) for c in CATEGORIES}

