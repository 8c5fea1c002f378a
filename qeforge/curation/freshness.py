"""How many eligible trajectories arrived since the current dataset version, per category."""

from __future__ import annotations

import pandas as pd

from qeforge.categories import CATEGORIES
from qeforge.curation.gate import GateRules, apply_gate


def new_eligible_counts(trajectories: pd.DataFrame, manifest: dict | None, gate: GateRules) -> dict[str, int]:
    """Rows that pass the gate now, minus those that passed it when the current version was curated
    (the manifest's `gated_recorded`); every eligible row is new when there is no version yet."""
    kept, _ = apply_gate(trajectories, gate)
    now = kept["category"].value_counts()
    report = (manifest or {}).get("report", {})
    return {c: max(0, int(now.get(c, 0)) - int(report.get(c, {}).get("gated_recorded", 0))) for c in CATEGORIES}
