"""Quality gate: keep what the fleet itself would promote to a reusable pattern."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class GateThresholds:
    # agentic-qe promotes a pattern to long-term memory at quality and confidence >= 0.8
    # after at least 3 uses; the defaults repeat that rule.
    min_quality: float = 0.8
    min_confidence: float = 0.8
    min_usage_count: int = 3


def apply_gate(frame: pd.DataFrame, t: GateThresholds) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return kept rows and, per reason, how many rows were rejected (first failing reason counts)."""
    reasons = pd.Series("", index=frame.index)
    checks = [
        ("outcome_not_success", frame["outcome"] != "success"),
        ("quality_below_min", frame["quality"] < t.min_quality),
        ("confidence_below_min", frame["confidence"] < t.min_confidence),
        ("usage_below_min", frame["usage_count"] < t.min_usage_count),
    ]
    for reason, failed in checks:
        reasons[(reasons == "") & failed] = reason
    rejected = reasons[reasons != ""].value_counts().to_dict()
    return frame[reasons == ""].reset_index(drop=True), {k: int(v) for k, v in rejected.items()}
