"""`qeforge report`: the latest evaluation and routing policy per category, as JSON or a table."""

from __future__ import annotations

import json
from pathlib import Path

from qeforge.categories import CATEGORIES
from qeforge.evaluation.policy import load_policy
from qeforge.evaluation.sandbox import WEAK_ISOLATION


def headline_scores(summary: dict) -> dict[str, float]:
    """An evaluation summary's headline numbers as flat fields: registry tags and asset metadata use these names."""
    ratio = summary["quality_ratio"]
    return {
        "adapter_score": summary["adapter_score"]["value"],
        "base_score": summary["base_score"]["value"],
        "claude_score": summary["claude_score"]["value"],
        "quality_ratio": ratio["value"],
        "quality_ratio_ci_low": ratio["ci_low"],
        "quality_ratio_ci_high": ratio["ci_high"],
    }


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def build_report(evals_dir: Path) -> dict:
    policy = load_policy(evals_dir / "routing_policies")
    categories = {}
    for category in CATEGORIES:
        entry = policy["categories"].get(category)
        if entry is None:
            continue
        base = evals_dir / category / entry["dataset_version"]
        summary, routing = _read(base / "summary.json") or {}, _read(base / "routing" / "routing.json") or {}
        score = lambda who: (summary.get(f"{who}_score") or {}).get("value")  # noqa: E731
        categories[category] = {
            "dataset_version": entry["dataset_version"],
            "eval_spec": entry["eval_spec"],
            "n_paired": summary.get("n_paired"),
            "n_eval": summary.get("n_eval"),
            "n_unscorable": summary.get("n_unscorable", 0),
            "unscorable_reasons": summary.get("unscorable_reasons", {}),
            "adapter_score": score("adapter"),
            "base_score": score("base"),
            "claude_score": score("claude"),
            "score_range": summary.get("score_range"),
            # Claude's recorded answers on their own truths: below 90% of the range the yardstick is off.
            "reference_calibration": summary.get("reference_calibration") or {},
            "quality_ratio": summary.get("quality_ratio"),
            "target_ratio": entry["target_ratio"],
            "meets_target": summary.get("meets_target"),
            "signal": entry["signal"],
            "threshold": entry["threshold"],
            "local_share": entry["expected_local_share"],
            "routed_quality_ratio": entry["expected_quality_ratio"],
            "routed_quality_ratio_ci": entry["expected_quality_ratio_ci"],
            "savings_per_1k_usd": entry["expected_savings_per_1k"],
            "cpt_95": (routing.get("cpt") or {}).get("95"),
            "apgr": routing.get("apgr"),
            "sandbox_isolation": summary.get("sandbox_isolation"),
        }
    return {"policy_version": policy["version"], "overall": policy["overall"], "categories": categories}


def _f(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_report(report: dict) -> str:
    head = (f"{'category':18} {'adapter':>8} {'base':>7} {'claude':>7} {'ref/own':>8} {'ratio [95% CI]':>19} {'target':>11}  "
            f"{'signal':14} {'threshold':>9} {'local':>6} {'routed':>6} {'$ saved/1k':>10} {'CPT95':>6} {'APGR':>5} "
            f"{'unscorable':>10}")
    lines = [f"routing policy {report['policy_version']}", head, "-" * len(head)]
    for c, r in report["categories"].items():
        q = r["quality_ratio"] or {}
        verdict = "pass" if r["meets_target"] else "FAIL"
        lines.append(
            f"{c:18} {_f(r['adapter_score'], '.3f'):>8} {_f(r['base_score'], '.3f'):>7} {_f(r['claude_score'], '.3f'):>7} "
            f"{_f((r.get('reference_calibration') or {}).get('share_of_range'), '.0%'):>8} "
            f"{_f(q.get('value')):>5} [{_f(q.get('ci_low'))}, {_f(q.get('ci_high'))}] {verdict} >= {r['target_ratio']:.2f}  "
            f"{r['signal']:14} {_f(r['threshold'], '.3f'):>9} {_f(r['local_share'], '.0%'):>6} "
            f"{_f(r['routed_quality_ratio']):>6} {_f(r['savings_per_1k_usd'], '.3f'):>10} {_f(r['cpt_95']):>6} {_f(r['apgr']):>5} "
            f"{_f(r['n_unscorable'], 'd'):>4} of {_f(r['n_eval'], 'd'):<4}"
        )
    for c, r in report["categories"].items():
        calibration = r.get("reference_calibration") or {}
        if calibration and not calibration["passed"]:
            lines.append(f"{c}: CALIBRATION FAIL: Claude's recorded answers score {_f(calibration['share_of_range'], '.0%')} of the "
                         f"range on their own truths (< {calibration['min_share_of_range']:.0%}); sources "
                         f"{calibration['truth_sources']}, skipped {calibration['rejected_sources']}, "
                         f"unscorable {calibration['unscorable_reasons']}")
    for c, r in report["categories"].items():
        if r.get("sandbox_isolation") == WEAK_ISOLATION:
            lines.append(f"{c}: {WEAK_ISOLATION}")
    reasons = [f"{c} {n} {reason}" for c, r in report["categories"].items() for reason, n in r["unscorable_reasons"].items()]
    if reasons:
        lines.append("unscorable (test split, left out of every score): " + "; ".join(reasons))
    o = report["overall"]
    lines.append(
        f"overall adapter/Claude (traffic-weighted): {_f(o.get('value'))} [{_f(o.get('ci_low'))}, {_f(o.get('ci_high'))}] "
        f"{'pass' if o.get('meets_target') else 'FAIL'} >= {_f(o.get('target'))}"
    )
    lines.append("ratio: adapter alone vs Claude on the test split; routed: with the threshold, confirmed on test; "
                 "ref/own: Claude's recorded answers scored on their own truths, as a share of the score range.")
    return "\n".join(lines)
