"""MLflow logging of one finished SFT run, from its training_summary.json, and its loss plot.

Recipes use `report_to: none`: transformers' MLflowCallback would open its own run from
process-wide env vars and log ~200 TrainingArguments; instead the caller logs exactly one run
per category here, against an explicit tracking URI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qeforge.locations import PROJECT_ROOT

STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_second")
FINAL_METRICS = ("train_loss", "final_train_loss", "val_loss", "base_val_loss", "trainable_params",
                 "total_params", "tokens_per_second", "wall_time_s", "train_runtime_s", "adapter_size_bytes",
                 "global_step")


def plot_loss_curves(summary: dict[str, Any], path: str | Path) -> Path:
    """PNG of train loss per step and validation loss per eval, with the base's val loss as a line."""
    import matplotlib

    matplotlib.use("Agg")  # headless: Dagster workers and CI have no display
    import matplotlib.pyplot as plt

    hist = summary.get("history", {})
    train, evals = hist.get("train", {}), hist.get("eval", {})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(train.get("step", []), train.get("loss", []), label="train loss", lw=1)
    if evals.get("step"):
        ax.plot(evals["step"], evals["eval_loss"], "o-", label="val loss")
    if summary.get("base_val_loss") is not None:
        ax.axhline(summary["base_val_loss"], ls="--", c="grey", label="base val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"SFT {summary.get('category', '')}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD's commit read from .git files (no git binary needed); None outside a checkout."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = str(v)[:500]  # MLflow caps param values; long lists are not worth more
    return flat


def log_training_run(summary: dict[str, Any], recipe_dict: dict[str, Any], adapter_dir: str | Path,
                     plot_path: str | Path | None, *, tracking_uri: str, experiment_name: str,
                     run_name: str | None = None, tags: dict[str, str] | None = None,
                     artifact_location: str | None = None) -> str:
    """Log one run (params, per-step metrics, adapter under adapter/, plot) and return its run_id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name, artifact_location)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    run_id = run.info.run_id
    try:
        params = _flatten(recipe_dict)
        params.update({"base_model": str(summary.get("base_model")), "dataset_hash": str(summary.get("dataset_hash")),
                       "fingerprint": str(summary.get("fingerprint")), "git_commit": str(git_commit())})
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            client.log_batch(run_id, params=items[i:i + 100])

        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        train = summary.get("history", {}).get("train", {})
        for name in STEP_METRICS:
            for step, value in zip(train.get("step", []), train.get(name, [])):
                if value is not None:
                    metrics.append(Metric(name, float(value), now, int(step)))
        evals = summary.get("history", {}).get("eval", {})
        for step, value in zip(evals.get("step", []), evals.get("eval_loss", [])):
            metrics.append(Metric("eval_loss", float(value), now, int(step)))
        final_step = int(summary.get("global_step") or 0)
        for name in FINAL_METRICS:
            if isinstance(summary.get(name), (int, float)):
                metrics.append(Metric(f"final/{name}", float(summary[name]), now, final_step))
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
            client.log_batch(run_id, metrics=metrics[i:i + 1000])

        client.log_artifacts(run_id, str(adapter_dir), "adapter")
        if plot_path is not None:
            client.log_artifact(run_id, str(plot_path), "plots")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
