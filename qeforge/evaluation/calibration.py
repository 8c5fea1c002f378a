"""Does the reference pass its own exam? Claude's recorded answers scored against their own truths.

Every evaluation scores the recorded answers exactly as it scores the adapter. Where the truth is
parsed from the recorded answer itself the reference scores the top of the range by construction;
where it comes from metadata, the task or a sandbox run, a low score means the yardstick is wrong
(a label read as the wrong thing, a suite the harness cannot run), not that Claude is. Below 90% of
the score range the evaluation's ratios cannot rank an adapter against the reference, and the
`reference_scores_its_truth` check fails with the sources and reasons behind the number.
"""

from __future__ import annotations

import math

import pandas as pd

MIN_SHARE_OF_RANGE = 0.90


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def truth_counts(frame: pd.DataFrame) -> dict:
    """How many examples could not be scored and why, which source gave each ground truth, and
    which sources were skipped because their value did not convert."""
    if "scorable" not in frame:
        return {"n_unscorable": 0, "unscorable_reasons": {}, "truth_sources": {}, "rejected_sources": {}}
    rejected = {}
    for column in (c for c in frame if c.startswith("rejected_")):
        skipped = frame[column].fillna("").str.split("; ").explode()
        rejected[column.removeprefix("rejected_")] = _counts(skipped[skipped != ""])
    return {
        "n_unscorable": int((~frame["scorable"].astype(bool)).sum()),
        "unscorable_reasons": _counts(frame.loc[~frame["scorable"].astype(bool), "unscorable_reason"]),
        "truth_sources": {c.removeprefix("source_"): _counts(frame[c]) for c in frame if c.startswith("source_")},
        "rejected_sources": rejected,
    }


def reference_calibration(score_range, scored: pd.DataFrame) -> dict:
    """The reference's mean score on its own truths, as a share of the score range, and whether it
    reaches MIN_SHARE_OF_RANGE. `scored`: the recorded answers scored as predictions (columns `score`,
    `scorable`, `unscorable_reason`, `source_*`, `rejected_*`). No scorable reference fails too."""
    lo, hi = score_range
    scores = scored.loc[scored["scorable"].astype(bool), "score"].astype(float) if len(scored) else pd.Series(dtype=float)
    mean = float(scores.mean()) if len(scores) else math.nan
    share = (mean - lo) / (hi - lo) if len(scores) else math.nan
    return {
        "reference_self_score": mean,
        "share_of_range": share,
        "min_share_of_range": MIN_SHARE_OF_RANGE,
        "passed": bool(len(scores) and share >= MIN_SHARE_OF_RANGE),
        "n_references": int(len(scored)),
        "n_scored": int(len(scores)),
        **truth_counts(scored),
    }
