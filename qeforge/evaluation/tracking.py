"""Evaluation results into the adapter's MLflow run: metrics, the per-example table, plots, the policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_scores(summary: dict, path: str | Path) -> Path:
    """Bar chart of base, adapter and Claude on the primary metric, with bootstrap 95% CIs."""
    from matplotlib.figure import Figure

    who = ("base", "adapter", "claude")
    values = [summary[f"{w}_score"]["value"] or 0.0 for w in who]
    lows = [v - (summary[f"{w}_score"]["ci_low"] or v) for w, v in zip(who, values)]
    highs = [(summary[f"{w}_score"]["ci_high"] or v) - v for w, v in zip(who, values)]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.bar(who, values, yerr=[lows, highs], capsize=6, color=["#bbb", "#3b7dd8", "#d97a3b"])
    lo, hi = summary["score_range"]
    ax.set_ylim(lo, hi * 1.05)
    ratio = {k: "n/a" if v is None else f"{v:.2f}" for k, v in summary["quality_ratio"].items()}  # None: nothing paired
    ax.set_title(f"{summary['task']}: adapter/Claude = {ratio['value']} "
                 f"[{ratio['ci_low']}, {ratio['ci_high']}] (target {summary['target_ratio']:.2f})", fontsize=9)
    ax.set_ylabel(f"score ({summary['eval_split']}, n={summary['n_paired']})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def numeric_items(prefix: str, data: dict) -> dict[str, float]:
    """Flatten nested numbers into MLflow metric names: {"a": {"b": 1}} -> {"prefix/a/b": 1.0}."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(numeric_items(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def log_to_run(tracking_uri: str, run_id: str, *, metrics: dict[str, float], artifacts: list[Path],
               artifact_path: str, dicts: dict[str, dict] | None = None, table: pd.DataFrame | None = None) -> None:
    """Append to an existing (finished) run: MLflow accepts metrics and artifacts on it by id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    for name, value in metrics.items():
        client.log_metric(run_id, name.replace("%", "pct"), value)
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    for name, data in (dicts or {}).items():
        client.log_dict(run_id, data, f"{artifact_path}/{name}")
    if table is not None:
        client.log_table(run_id, data=table, artifact_file=f"{artifact_path}/examples.json")
