"""Train/validation/test splits, stratified by category, with no near-duplicate across splits.

Rows closer than `leakage_threshold` (below the dedup threshold, for margin)
form one group and a group goes to one split as a whole. Groups are shuffled
with the seed and each goes to the split of its category that is furthest
below its target count, which lands within one group of the 70/15/15 ratios.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qeforge.curation.neighbors import connected_components, ivf_pairs

SPLITS = ("train", "validation", "test")


def leakage_groups(vectors: np.ndarray, threshold: float, *, seed: int = 0) -> np.ndarray:
    return connected_components(len(vectors), ivf_pairs(vectors, threshold, seed=seed))


def assign_splits(
    frame: pd.DataFrame, groups: np.ndarray, ratios: tuple[float, float, float], *, seed: int = 0
) -> pd.Series:
    ratios = np.asarray(ratios, dtype=float) / sum(ratios)
    frame = frame.assign(_group=groups)
    # A group's category is that of its best member (groups rarely straddle categories).
    group_category = frame.sort_values(["quality", "id"], ascending=[False, True]).groupby("_group")["category"].first()
    group_size = frame.groupby("_group").size()
    order = np.random.default_rng(seed).permutation(np.sort(group_size.index.to_numpy()))
    totals = frame["category"].value_counts()
    filled = {c: np.zeros(3) for c in totals.index}
    split_of_group = {}
    for g in order:
        c = group_category[g]
        deficit = ratios * totals[c] - filled[c]
        choice = int(np.argmax(deficit))
        split_of_group[g] = SPLITS[choice]
        filled[c][choice] += group_size[g]
    return frame["_group"].map(split_of_group).rename("split")
