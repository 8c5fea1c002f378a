"""Exact and semantic deduplication, keeping the best member of each group."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qeforge.curation.neighbors import connected_components, ivf_pairs

_WS = re.compile(r"\s+")


def normalized_hash(task: str, output: str) -> str:
    """Case and whitespace do not make a different trajectory."""
    text = _WS.sub(" ", task.strip().lower()) + "\x00" + _WS.sub(" ", output.strip().lower())
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DedupResult:
    kept: pd.DataFrame  # best member of each group, with `dup_group_size`
    removed: pd.DataFrame  # id, duplicate_of, kind
    exact_groups: int
    semantic_groups: int
    examples: list[dict]


def best_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Quality, then reuse, then id: the order that decides who represents a group."""
    return frame.sort_values(["quality", "usage_count", "id"], ascending=[False, False, True])


def deduplicate(frame: pd.DataFrame, vectors: np.ndarray, threshold: float, *, seed: int = 0) -> DedupResult:
    n = len(frame)
    hashes = [normalized_hash(t, o) for t, o in zip(frame["task"], frame["output"])]
    exact_label = pd.Series(hashes).groupby(hashes).ngroup().to_numpy()
    exact_pairs = np.array(
        [(i, j) for idx in pd.Series(range(n)).groupby(exact_label).agg(list) for i, j in zip(idx, idx[1:])],
        dtype=np.int64,
    ).reshape(-1, 2)
    semantic_pairs = ivf_pairs(vectors, threshold, seed=seed)
    groups = connected_components(n, np.concatenate([exact_pairs, semantic_pairs]))
    exact_groups = connected_components(n, exact_pairs)

    frame = frame.assign(_group=groups, _exact_group=exact_groups, _row=np.arange(n))
    ordered = best_first(frame)
    leader = ordered.groupby("_group", sort=False).head(1).set_index("_group")
    sizes = frame.groupby("_group").size()
    kept_mask = frame["_row"].isin(leader["_row"])
    removed = frame[~kept_mask]
    leader_id = leader["id"]
    leader_exact = leader["_exact_group"]
    removed_table = pd.DataFrame(
        {
            "id": removed["id"].to_numpy(),
            "duplicate_of": leader_id.loc[removed["_group"]].to_numpy(),
            "kind": np.where(
                leader_exact.loc[removed["_group"]].to_numpy() == removed["_exact_group"].to_numpy(),
                "exact",
                "semantic",
            ),
        }
    )
    multi = sizes[sizes > 1]
    examples = []
    for group in multi.sort_values(ascending=False).index[:5]:
        members = best_first(frame[frame["_group"] == group])
        examples.append(
            {"kept": members.iloc[0]["task"][:160], "dropped": members.iloc[1]["task"][:160], "size": int(len(members))}
        )
    kept = frame[kept_mask].assign(dup_group_size=sizes.loc[frame.loc[kept_mask, "_group"]].to_numpy())
    exact_multi = pd.Series(exact_groups).value_counts()
    return DedupResult(
        kept=kept.drop(columns=["_group", "_exact_group", "_row"]).reset_index(drop=True),
        removed=removed_table,
        exact_groups=int((exact_multi > 1).sum()),
        semantic_groups=int(len(multi)) - int((exact_multi > 1).sum()),
        examples=examples,
    )
