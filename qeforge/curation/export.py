"""Write curated splits as versioned Hugging Face datasets, one DatasetDict per category.

Layout under the datasets directory:
    <version>/<category>/        DatasetDict (train, validation, test) + README.md card
    <version>/multi-task/        optional: one DatasetDict of every category at the target mix
    <version>/manifest.json      counts and curation report
    <version>/classifier.json    the category classifier
    CURRENT                      the version in use
The version is a content hash, so the same curated rows give the same version.
A version is written to a temporary directory and renamed into place, then
CURRENT is swapped: a crash mid-write leaves the previous version in use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS
from qeforge.curation.exchanges import recorded_messages
from qeforge.curation.split import SPLITS

COLUMNS = ("id", "category", "messages", "quality", "model", "group", "metadata")


def to_messages(category: str, task: str, output: str, metadata: str | None = None) -> list[dict[str, str]]:
    """system, user, assistant. A recorded exchange keeps its own system prompt and turns as they were
    sent; without a system prompt it gets the category's, as the gateway gives such a call (engine._plan)."""
    recorded = recorded_messages(metadata)
    system, turns = recorded if recorded else ("", [{"role": "user", "content": task}])
    return [{"role": "system", "content": system or SYSTEM_PROMPTS[category]}, *turns,
            {"role": "assistant", "content": output}]


def dataset_records(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": frame["id"],
            "category": frame["category"],
            "messages": [to_messages(c, t, o, m) for c, t, o, m in
                         zip(frame["category"], frame["task"], frame["output"], frame["metadata"])],
            "quality": frame["quality"].astype(float),
            "model": frame["model"],
            "group": frame["group"].astype(str),
            "metadata": frame["metadata"],
            "split": frame["split"],
        }
    ).sort_values(["category", "split", "id"], kind="stable")


MULTITASK = "multi-task"


def content_version(records: pd.DataFrame, multitask: pd.DataFrame | None = None) -> str:
    digest = hashlib.sha256()
    for row in records[["category", "split", "id", "messages", "metadata"]].itertuples(index=False):
        digest.update(json.dumps(list(row), sort_keys=True).encode())
    if multitask is not None:  # its rows are already hashed above; which ones it holds is what differs
        digest.update(json.dumps([MULTITASK, *sorted(zip(multitask["split"], multitask["id"]))]).encode())
    return digest.hexdigest()[:16]


def _card(category: str, version: str, counts: dict[str, int], report: dict) -> str:
    lines = [
        "---",
        "language: [en]",
        "task_categories: [text-generation]",
        f"pretty_name: qeforge {category} {version}",
        "configs:",
        f"  - config_name: {category}",
        "---",
        f"# qeforge / {category} (version `{version}`)",
        "",
        f"Chat-format (`messages`: system, user, assistant) supervised fine-tuning data for the `{category}` adapter,",
        "curated from the QE fleet's ReasoningBank: validated, quality-gated, exact and semantic near-duplicates",
        "removed (same task and same answer), split with no near-duplicate across splits.",
        "",
        "| split | rows |",
        "|---|---|",
        *[f"| {s} | {counts.get(s, 0)} |" for s in SPLITS],
        "",
        "Curation report:",
        "```json",
        json.dumps(report, indent=2, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _save_splits(part: pd.DataFrame, path: Path) -> dict[str, int]:
    from datasets import Dataset, DatasetDict

    splits = {
        s: Dataset.from_pandas(part[part["split"] == s][list(COLUMNS)].reset_index(drop=True), preserve_index=False)
        for s in SPLITS
    }
    # An empty split written with datasets' default sharding has no data file, and load_from_disk then fails
    # (datasets 5.2): one empty shard keeps a category with no rows (or no test rows) loadable.
    DatasetDict(splits).save_to_disk(str(path), num_shards={s: 1 for s, d in splits.items() if len(d) == 0})
    return {s: int((part["split"] == s).sum()) for s in SPLITS}


def write_version(
    records: pd.DataFrame, root: Path, *, report: dict, classifier=None, multitask: pd.DataFrame | None = None
) -> tuple[str, Path, bool]:
    """Write a version unless it already exists; point CURRENT at it. Returns (version, path, written)."""
    root.mkdir(parents=True, exist_ok=True)
    version = content_version(records, multitask)
    final = root / version
    written = False
    if not (final / "manifest.json").exists():
        staging = root / f".{version}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        counts = {}
        for category in CATEGORIES:
            counts[category] = _save_splits(records[records["category"] == category], staging / category)
            (staging / category / "README.md").write_text(_card(category, version, counts[category], report.get(category, {})))
        if multitask is not None:
            counts[MULTITASK] = _save_splits(multitask, staging / MULTITASK)
        if classifier is not None:
            classifier.save(staging / "classifier.json")
        manifest = {"version": version, "splits": counts, "report": report}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        written = True
    pointer = root / f".CURRENT.tmp-{os.getpid()}"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / "CURRENT")
    return version, final, written


def current_version(root: Path) -> tuple[str, Path] | None:
    pointer = Path(root) / "CURRENT"
    if not pointer.exists():
        return None
    version = pointer.read_text().strip()
    return version, Path(root) / version


def load_manifest(root: Path) -> dict | None:
    current = current_version(root)
    if current is None:
        return None
    return json.loads((current[1] / "manifest.json").read_text())


def current_classifier_path(root: Path) -> Path | None:
    """The category classifier the current version was curated with (what the shim's `qeforge` model uses)."""
    current = current_version(root)
    path = current[1] / "classifier.json" if current else None
    return path if path is not None and path.exists() else None
