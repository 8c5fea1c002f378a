"""Which of the four categories a trajectory belongs to, before any classifier guesses.

A recorded category is kept. Otherwise the producer's domain decides, through a documented map
(agentic-qe has 12 domains plus `general`). Three kinds of entry:
- a category: every task of that domain is that kind of work;
- "by-task": the domain mixes our work with other work (flaky hunting sits in test-execution
  beside plain test runs), so the task text decides with TASK_PATTERNS, and a task that matches
  none is out of scope;
- None: out of scope (security scans, requirements, ...): stored and counted, never trained on.
A domain the map does not name (or no domain) is left to the embedding classifier.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from qeforge.categories import CATEGORIES

BY_TASK = "by-task"

AQE_DOMAIN_CATEGORIES: dict[str, str | None] = {
    "test-generation": "test-generation",
    "coverage-analysis": "coverage-analysis",
    "test-execution": BY_TASK,  # flaky hunting, beside plain test runs
    "defect-intelligence": BY_TASK,  # flaky root causes, beside defect prediction
    "code-intelligence": BY_TASK,  # reviews, beside code indexing and edit hooks
    "quality-assessment": BY_TASK,  # reviews, beside quality gates
    "requirements-validation": None,
    "security-compliance": None,
    "contract-testing": None,
    "visual-accessibility": None,
    "chaos-resilience": None,
    "learning-optimization": None,
    "general": BY_TASK,  # hook tasks land here whatever the agent did
}

# First match wins, in this order: a flaky-test task that also says "review" is flaky work.
TASK_PATTERNS: dict[str, str] = {
    "flaky-detection": r"\bflak(y|iness)\b|\bintermittent",
    "code-review": r"\breview|\bdiff\b|\bpull request\b",
    "coverage-analysis": r"\bcoverage\b|\buncovered\b",
    "test-generation": r"\b(write|generate|add)\b.*\btests?\b",
}

def resolve_categories(
    frame: pd.DataFrame, domain_map: dict[str, str | None], task_patterns: dict[str, str]
) -> tuple[pd.Series, pd.Series]:
    """(category per row or None, its source per row: recorded, domain_map, task_pattern, out_of_scope
    or unmapped, so reports can say how much is recorded vs inferred). `unmapped` rows go to the classifier;
    `out_of_scope` rows are excluded by the gate with the domain as the reason."""
    unknown = {v for v in domain_map.values() if v not in (*CATEGORIES, BY_TASK, None)}
    unknown |= set(task_patterns) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"domain map names {sorted(unknown)}; categories are {CATEGORIES} (or {BY_TASK!r}, null)")
    patterns = [(c, re.compile(p, re.IGNORECASE)) for c, p in task_patterns.items()]
    category = frame["category"].astype(object).where(frame["category"].notna(), None)
    source = pd.Series(np.where(category.notna(), "recorded", "unmapped"), index=frame.index, dtype=object)
    for i in frame.index[category.isna()]:
        domain = frame.at[i, "domain"] or ""
        if domain not in domain_map:
            continue
        target = domain_map[domain]
        if target == BY_TASK:
            target = next((c for c, p in patterns if p.search(frame.at[i, "task"] or "")), None)
            source[i] = "task_pattern" if target else "out_of_scope"
        else:
            source[i] = "domain_map" if target else "out_of_scope"
        category[i] = target
    return category, source
