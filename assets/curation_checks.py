"""Asset checks of the curation stage.

The leakage check recomputes everything it needs on its own (its own text
normalization, brute-force cosines over the written datasets), so a bug in
the dedup or split code cannot hide itself.
"""


import json
import re

import numpy as np
import pandas as pd

import dagster as dg
from pipelines.resources import CurationSettings, LanceDBResource
from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.curation.split import SPLITS
from qeforge.schema import TRAJECTORY_SCHEMA, InvalidRow, validate_row


@dg.asset_check(asset="raw_trajectories", description="Stored table matches the trajectory schema and every row re-validates")
def schema_valid(lancedb: LanceDBResource) -> dg.AssetCheckResult:
    table = store.trajectories(lancedb.connect()).to_arrow()
    missing = [f.name for f in TRAJECTORY_SCHEMA if f.name not in table.schema.names]
    wrong_type = [
        f.name for f in TRAJECTORY_SCHEMA if f.name in table.schema.names and table.schema.field(f.name).type != f.type
    ]
    invalid: dict[str, int] = {}
    for row in table.to_pylist():
        row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
        row["created_at"] = row["created_at"].isoformat() if row["created_at"] else None
        try:
            validate_row(row)
        except InvalidRow as err:
            invalid[err.reason] = invalid.get(err.reason, 0) + 1
    return dg.AssetCheckResult(
        passed=not missing and not wrong_type and not invalid,
        metadata={
            "rows_checked": table.num_rows,
            "missing_columns": ", ".join(missing) or "none",
            "wrong_type_columns": ", ".join(wrong_type) or "none",
            "invalid_rows": sum(invalid.values()),
        },
    )


@dg.asset_check(asset="raw_trajectories", description="Quarantined share of all rows read stays under the bound")
def quarantine_rate_below_bound(lancedb: LanceDBResource, curation: CurationSettings) -> dg.AssetCheckResult:
    db = lancedb.connect()
    good = store.trajectories(db).count_rows()
    bad = store.quarantine(db).count_rows()
    rate = bad / max(1, good + bad)
    return dg.AssetCheckResult(
        passed=rate <= curation.max_quarantine_rate,
        metadata={"quarantine_rate": rate, "bound": curation.max_quarantine_rate, "quarantined": bad, "stored": good},
    )


@dg.asset_check(asset="balanced", additional_ins={"categorized": dg.AssetIn("categorized")},
                description="No category loses a row to balancing unless the per-category cap asks for it")
def no_row_dropped_below_cap(balanced: pd.DataFrame, categorized: pd.DataFrame, curation: CurationSettings) -> dg.AssetCheckResult:
    cap = curation.per_category_cap
    available = categorized["category"].value_counts()
    used = balanced["category"].value_counts()
    short = {c: int(min(available.get(c, 0), cap if cap is not None else available.get(c, 0)) - used.get(c, 0))
             for c in CATEGORIES}
    return dg.AssetCheckResult(
        passed=not any(short.values()) and set(balanced["id"]) <= set(categorized["id"]),
        metadata={"rows_missing": sum(short.values()), "per_category_cap": cap if cap is not None else "none",
                  **{f"missing/{c}": n for c, n in short.items()}},
    )


def _load_splits(path: str) -> pd.DataFrame:
    from datasets import load_from_disk

    frames = []
    for category in CATEGORIES:
        dd = load_from_disk(f"{path}/{category}")
        for split in SPLITS:
            part = dd[split].select_columns(["id", "messages"]).to_pandas()
            frames.append(part.assign(split=split, category=category))
    return pd.concat(frames, ignore_index=True)


@dg.asset_check(asset="curated_datasets", description="Every split of every category has rows")
def splits_non_empty(curated_datasets: dict) -> dg.AssetCheckResult:
    empty = [f"{c}/{s}" for c, sizes in curated_datasets["splits"].items() for s in SPLITS if sizes[s] == 0]
    smallest = min(n for sizes in curated_datasets["splits"].values() for n in sizes.values())
    return dg.AssetCheckResult(
        passed=not empty, metadata={"empty_splits": ", ".join(empty) or "none", "smallest_split_rows": smallest}
    )


def cross_split_leakage(texts: list[str], vectors: np.ndarray, splits: np.ndarray, threshold: float) -> dict:
    """Brute force: identical normalized text or cosine >= threshold between rows of different splits."""
    norm = [re.sub(r"\s+", " ", t).strip().lower() for t in texts]
    seen: dict[str, str] = {}
    exact = 0
    for text, split in zip(norm, splits):
        if seen.setdefault(text, split) != split:
            exact += 1
    worst = -1.0
    semantic = 0
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            va, vb = vectors[splits == a], vectors[splits == b]
            if len(va) and len(vb):
                sims = va @ vb.T
                worst = max(worst, float(sims.max()))
                semantic += int((sims >= threshold).sum())
    return {"exact_cross_split": exact, "semantic_cross_split_pairs": semantic, "max_cross_split_cosine": worst}


@dg.asset_check(asset="curated_datasets", description="No exact or near-duplicate task appears in two splits")
def no_cross_split_leakage(
    curated_datasets: dict, lancedb: LanceDBResource, curation: CurationSettings
) -> dg.AssetCheckResult:
    rows = _load_splits(curated_datasets["path"])
    texts = [m[1]["content"] for m in rows["messages"]]
    emb = store.open_table(lancedb.connect(), store.EMBEDDINGS, None).to_pandas().set_index("id")
    vectors = np.stack(emb.loc[rows["id"], "vector"].to_numpy()).astype(np.float32)
    # The cosine the splits grouped at: the check tests the promise assign_splits made.
    found = cross_split_leakage(texts, vectors, rows["split"].to_numpy(), curation.leakage_threshold)
    return dg.AssetCheckResult(
        passed=found["exact_cross_split"] == 0 and found["semantic_cross_split_pairs"] == 0,
        metadata={**found, "threshold": curation.leakage_threshold, "rows_checked": len(rows)},
    )


CURATION_CHECKS = [schema_valid, quarantine_rate_below_bound, no_row_dropped_below_cap, splits_non_empty, no_cross_split_leakage]
