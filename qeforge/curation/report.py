"""The curation report a dataset version's manifest carries: per category, where its rows went at
each step, and the corpus as a whole."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qeforge.categories import CATEGORIES
from qeforge.curation.split import SPLITS


def curation_report(raw: pd.DataFrame, gated: pd.DataFrame, categorized: pd.DataFrame, used: pd.DataFrame,
                    groups: np.ndarray, quarantine_reasons: pd.Series) -> dict:
    """`used`: the rows written (after the cap), `groups[i]` the leakage group of used row i."""
    recorded_gated = gated["category"].value_counts()
    recorded_kept = categorized[categorized["category_source"] != "classifier"]["category"].value_counts()
    after_dedup = categorized["category"].value_counts()
    report = {
        c: {
            "raw_recorded": int((raw["category"] == c).sum()),
            "gated_recorded": int(recorded_gated.get(c, 0)),
            "dedup_removed_recorded": int(recorded_gated.get(c, 0) - recorded_kept.get(c, 0)),
            "after_dedup_and_categorization": int(after_dedup.get(c, 0)),
            "used": int((used["category"] == c).sum()),
            "dropped_by_cap": int(after_dedup.get(c, 0) - (used["category"] == c).sum()),
            "leakage_groups_multi": int(pd.Series(groups[used["category"].to_numpy() == c]).value_counts().gt(1).sum()),
        }
        for c in CATEGORIES
    }
    # Quarantined rows often have no trustworthy category: counted for the corpus as a whole.
    report["corpus"] = {
        "stored": len(raw),
        "quarantined": len(quarantine_reasons),
        "quarantined_by_reason": {str(k): int(v) for k, v in quarantine_reasons.value_counts().sort_index().items()},
        "gated": len(gated),
        "dedup_removed": len(gated) - len(categorized),
        "unlabeled_assigned_by_classifier": int((categorized["category_source"] == "classifier").sum()),
    }
    return report


def split_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Rows per category and split."""
    return {c: {s: int(((frame["category"] == c) & (frame["split"] == s)).sum()) for s in SPLITS}
            for c in CATEGORIES}
