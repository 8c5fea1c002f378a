"""How many rows each dataset gets, without inventing rows and without dropping good ones by default.

Each category trains its own adapter, so the category's dataset is every row it has, or its best
`cap` rows when a per-category cap is set. The target mix (40/30/20/10) is a traffic mix, not a
training budget: it weights the overall quality ratio, and it shapes the optional single multi-task
dataset, where categories compete for one model's capacity.

For that mixed dataset the largest set that honours the mix is N = min_c(available_c / share_c): the
scarcest category relative to its share decides the size, the others contribute share_c * N rows,
their best ones. With 40/30/20/10 and 500/400/300/20 available, code review decides:
N = 20 / 0.10 = 200 -> 80/60/40/20.
"""

from __future__ import annotations

import math

import pandas as pd

from qeforge.curation.dedup import best_first


def cap_per_category(frame: pd.DataFrame, categories, cap: int | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every row of every category, or its best `cap`; rows used vs available per category."""
    report, parts = {}, []
    for category in categories:
        rows = best_first(frame[frame["category"] == category])
        used = rows if cap is None else rows.head(cap)
        parts.append(used)
        report[category] = {"available": int(len(rows)), "used": int(len(used)), "dropped_by_cap": int(len(rows) - len(used))}
    out = pd.concat(parts) if parts else frame.iloc[:0]
    return out.sort_values("id").reset_index(drop=True), report


def mix_rows(frame: pd.DataFrame, mix: dict[str, float]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The largest subset whose category shares equal `mix` (best rows first); never upsampled."""
    total_share = sum(mix.values())
    shares = {c: s / total_share for c, s in mix.items() if s > 0}
    available = frame["category"].value_counts().to_dict()
    size = min(available.get(c, 0) / s for c, s in shares.items())
    report, parts = {}, []
    for category, share in shares.items():
        want = math.floor(share * size + 1e-9)  # 1e-9: 0.1 * 200 is 20.000000000000004 or 19.999999999999996
        parts.append(best_first(frame[frame["category"] == category]).head(want))
        report[category] = {"available": int(available.get(category, 0)), "share": round(share, 4), "selected": want}
    return pd.concat(parts).sort_values("id").reset_index(drop=True), report
