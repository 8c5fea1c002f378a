"""Quality gate: keep what the fleet itself would promote to a reusable pattern, and say why the rest fell."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from qeforge.curation.domains import AQE_DOMAIN_CATEGORIES, TASK_PATTERNS, resolve_categories
from qeforge.curation.exchanges import SOURCE as EXCHANGES_SOURCE


@dataclass(frozen=True)
class GateRules:
    # agentic-qe promotes a pattern to long-term memory at quality and confidence >= 0.8
    # after at least 3 uses; the defaults repeat that rule.
    min_quality: float = 0.8
    min_confidence: float = 0.8
    min_usage_count: int = 3
    domain_categories: dict[str, str | None] = field(default_factory=lambda: dict(AQE_DOMAIN_CATEGORIES))
    task_patterns: dict[str, str] = field(default_factory=lambda: dict(TASK_PATTERNS))
    # Rows from these imports are references by policy, not patterns waiting for reuse: a Claude answer
    # to a real fleet prompt (curation/exchanges.py). Every other condition applies to them.
    reference_sources: tuple[str, ...] = (EXCHANGES_SOURCE,)


# What apply_gate reads of a trajectory.
GATE_COLUMNS = ["task", "category", "domain", "outcome", "quality", "confidence", "usage_count", "source"]

# Condition names, in the order the first failing one is charged.
CONDITIONS = ("out_of_scope", "outcome_not_success", "quality_below_min", "confidence_below_min", "usage_below_min")


@dataclass
class GateReport:
    rows_in: int
    kept: int
    first_failing: dict[str, int]  # each rejected row counted once, under its first failing condition
    failing: dict[str, int]  # each condition's failures; a row fails several at once
    out_of_scope_domains: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # of the rows failing the outcome condition

    def explain(self) -> str:
        """One sentence a person can act on, e.g. in a failed check or the CLI."""
        if not self.rows_in:
            return "no trajectories were read"
        head = f"{self.kept} of {self.rows_in} trajectories passed the gate"
        if self.kept == self.rows_in:
            return head
        fails = ", ".join(f"{n} {c}" for c, n in self.failing.items() if n)
        return f"{head}; failing (a row can fail several): {fails}"


def apply_gate(frame: pd.DataFrame, t: GateRules) -> tuple[pd.DataFrame, GateReport]:
    """Kept rows, with `category` resolved and its `category_source` (domains.py), and the report.
    Rows whose domain is out of scope fail first, with their domain counted."""
    category, source = resolve_categories(frame, t.domain_categories, t.task_patterns)
    frame = frame.assign(category=category, category_source=source)
    out_of_scope = source.eq("out_of_scope")
    reference = frame["source"].isin(t.reference_sources) if "source" in frame else pd.Series(False, index=frame.index)
    checks = {
        "out_of_scope": out_of_scope,
        "outcome_not_success": frame["outcome"] != "success",
        "quality_below_min": frame["quality"] < t.min_quality,
        "confidence_below_min": frame["confidence"] < t.min_confidence,
        "usage_below_min": (frame["usage_count"].fillna(0) < t.min_usage_count) & ~reference,
    }
    first = pd.Series("", index=frame.index)
    for name in CONDITIONS:
        first[(first == "") & checks[name]] = name
    kept = first == ""
    report = GateReport(
        rows_in=len(frame),
        kept=int(kept.sum()),
        first_failing={c: int((first == c).sum()) for c in CONDITIONS},
        failing={c: int(checks[c].sum()) for c in CONDITIONS},
        out_of_scope_domains={str(k): int(v) for k, v in frame.loc[out_of_scope, "domain"].fillna("").value_counts().items()},
        outcomes={str(k): int(v) for k, v in frame.loc[checks["outcome_not_success"], "outcome"].value_counts().items()},
    )
    return frame[kept].reset_index(drop=True), report
