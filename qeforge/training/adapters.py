"""Where trained adapters live and what is recorded beside them.

One directory per category and dataset version, <adapters_dir>/<category>/<dataset version>/, holding
the PEFT files, training_summary.json (written by sft.main) and mlflow_run.json (the MLflow run that
tracked it, so an unchanged retrain reuses the run instead of logging a new one).
"""

from __future__ import annotations

import json
from pathlib import Path

from qeforge.categories import CATEGORIES

SUMMARY_FILE = "training_summary.json"
RUN_FILE = "mlflow_run.json"


def adapter_dir(adapters_dir: str | Path, category: str, dataset_version: str) -> Path:
    return Path(adapters_dir) / category / dataset_version


def write_run_record(directory: Path, run_id: str, tracking_uri: str) -> None:
    (Path(directory) / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))


def recorded_run_id(directory: Path) -> str | None:
    """The MLflow run recorded beside an adapter, None when it was never tracked."""
    path = Path(directory) / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


def latest_adapters(adapters_dir: str | Path) -> dict[str, dict]:
    """Per category, the most recently finished adapter (by its training summary's time)."""
    found = {}
    for category in CATEGORIES:
        summaries = sorted((Path(adapters_dir) / category).glob(f"*/{SUMMARY_FILE}"), key=lambda p: p.stat().st_mtime)
        if not summaries:
            continue
        directory = summaries[-1].parent
        summary = json.loads(summaries[-1].read_text())
        found[category] = {
            "adapter_dir": str(directory),
            "base_model": summary.get("base_model"),
            "dataset_version": directory.name,
            "dataset_hash": summary.get("dataset_hash"),
            "mlflow_run_id": recorded_run_id(directory),
            "train_loss": summary.get("train_loss"),
            "val_loss": summary.get("val_loss"),
            "base_val_loss": summary.get("base_val_loss"),
        }
    return found
