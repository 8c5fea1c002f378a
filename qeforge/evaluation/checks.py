"""What the evaluation's asset checks decide, as plain functions: each returns (passed, metadata)."""

from __future__ import annotations

import pandas as pd

from qeforge.evaluation.sandbox import isolation_summary


def adapter_beats_base(summary: dict) -> tuple[bool, dict]:
    """The adapter's mean primary score is above its base model's."""
    gain = summary["adapter_gain_over_base"]
    return bool(gain is not None and gain > 0), {
        "adapter_score": summary["adapter_score"]["value"], "base_score": summary["base_score"]["value"],
        "gain": gain if gain is not None else float("nan")}


def evaluated_on_test_split_only(evaluated_ids: set[str], ids_by_split: dict[str, set[str]],
                                 eval_split: str) -> tuple[bool, dict]:
    """The spec evaluates on `test`, and exactly its examples were scored, none of them also in another split."""
    others = set().union(*(ids for split, ids in ids_by_split.items() if split != eval_split))
    leaked = len(evaluated_ids & others)
    passed = eval_split == "test" and leaked == 0 and evaluated_ids == ids_by_split[eval_split]
    return passed, {"eval_split": eval_split, "eval_examples": len(evaluated_ids), "in_train_or_validation": leaked}


def sandbox_contained(frame: pd.DataFrame) -> tuple[bool, dict]:
    """Every syntactically valid generated suite ran in the sandbox and none escaped (timeouts and
    crashes are counted, not failures). Categories that run no generated code pass."""
    who = [w for w in ("adapter", "base", "claude") if f"{w}_sandbox_ran" in frame]
    if not who:
        return True, {"sandboxed_runs": 0, "note": "this category runs no generated code"}
    isolation = isolation_summary(v for w in who if f"{w}_sandbox_isolation" in frame for v in frame[f"{w}_sandbox_isolation"])
    rows = pd.concat([frame[[f"{w}_syntax_valid", f"{w}_sandbox_ran", f"{w}_escaped", f"{w}_sandbox_status"]]
                      .set_axis(["syntax_valid", "ran", "escaped", "status"], axis=1) for w in who]).dropna()
    runnable = rows[rows["syntax_valid"].astype(bool)]
    statuses = runnable["status"].value_counts()
    passed = bool(runnable["ran"].astype(bool).all() and not runnable["escaped"].astype(bool).any())
    return passed, {
        "runnable_suites": len(runnable),
        "sandboxed_runs": int(runnable["ran"].astype(bool).sum()),
        "escapes": int(runnable["escaped"].astype(bool).sum()),
        "timeouts": int(statuses.get("timeout", 0)),
        "crashes": int(statuses.get("crash", 0)),
        "isolation": isolation or "no sandboxed runs",
    }


def reference_scores_its_truth(summary: dict) -> tuple[bool, dict]:
    """Claude's recorded answers score at least 90% of the score range on their own truths (calibration.py)."""
    c = summary["reference_calibration"]
    nan = float("nan")
    return bool(c["passed"]), {
        "reference_self_score": c["reference_self_score"] if c["reference_self_score"] is not None else nan,
        "share_of_range": c["share_of_range"] if c["share_of_range"] is not None else nan,
        "min_share_of_range": c["min_share_of_range"],
        "adapter_score": summary["adapter_score"]["value"] if summary["adapter_score"]["value"] is not None else nan,
        "n_references": c["n_references"], "n_scored": c["n_scored"], "n_unscorable": c["n_unscorable"],
    }
