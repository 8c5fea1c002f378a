"""Balance categories to a target mix without inventing rows.

The largest corpus that honours the mix is N = min_c(available_c / share_c):
the scarcest category relative to its share decides the size, the others are
cut down to share_c * N, keeping their best rows. A category short of what a
requested `target_total` needs is reported as a shortfall.
"""

from __future__ import annotations

import math

import pandas as pd

from qeforge.curation.dedup import best_first


def balance(
    frame: pd.DataFrame, mix: dict[str, float], *, target_total: int | None = None
) -> tuple[pd.DataFrame, dict[str, dict]]:
    total_share = sum(mix.values())
    shares = {c: s / total_share for c, s in mix.items()}
    available = frame["category"].value_counts().to_dict()
    feasible = min(available.get(c, 0) / s for c, s in shares.items() if s > 0)
    size = feasible if target_total is None else min(feasible, target_total)
    report, parts = {}, []
    for category, share in shares.items():
        have = int(available.get(category, 0))
        want = math.floor(share * size + 1e-9)
        requested = math.floor(share * target_total) if target_total else want
        rows = best_first(frame[frame["category"] == category]).head(want)
        parts.append(rows)
        report[category] = {
            "available": have,
            "target_share": round(share, 4),
            "selected": int(len(rows)),
            "dropped_surplus": have - int(len(rows)),
            "shortfall": max(0, requested - have),
        }
    balanced = pd.concat(parts).sort_values("id").reset_index(drop=True)
    return balanced, report
