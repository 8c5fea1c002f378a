"""The traffic report: how much of the fleet's real traffic qeforge answers locally, and at what quality.

Read from the gateway's `exchanges` table (serving/recording.py), qeforge's own checks left out. Per
category (and "none") and time window: requests, the share answered locally (`local`, and
`local_fallback` when Claude was unreachable), the share escalated to Claude by reason, the share
declined, dollars saved per 1k requests, and agreement with Claude where Claude's answer is known.

Agreement with Claude: a local answer whose exact prompt (system and turns) Claude also answered,
in any recorded exchange, is scored against that answer with the evaluation's ROUGE-L F1
(evals/metrics/rouge_l); 1.0 is Claude's own answer. Claude's answer is known for the prompts that
escalated once and were answered locally later, which is what a training cycle on recorded traffic
produces.

Dollars saved: what Claude would have cost for each local answer (its prompt and completion tokens
at EvaluationSettings' prices; the local tokenizer's counts, so an estimate) less the local server's
cost per request, per 1k requests of the group.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from qeforge.curation.exchanges import LOCAL_DECISIONS, OWN_CALLERS
from qeforge.evaluation.routing import Prices

COLUMNS = ("received_at", "category", "decision", "reason", "caller", "protocol", "prompt_tokens", "completion_tokens", "answer",
           "system", "messages", "status")


def read_exchanges(db) -> list[dict]:
    """The columns the report reads, every row of the `exchanges` table; [] before the first exchange."""
    from qeforge import store

    if store.EXCHANGES not in db.table_names():
        return []
    return db.open_table(store.EXCHANGES).to_arrow().select(list(COLUMNS)).to_pylist()


def fleet_frame(rows: list[dict]) -> pd.DataFrame:
    """The exchanges table's rows (Arrow to_pylist) as a frame of the fleet's calls: qeforge's own checks out."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame[~frame["caller"].fillna("").isin(OWN_CALLERS)].reset_index(drop=True)
    frame["category"] = frame["category"].fillna("none")
    frame["caller"] = frame["caller"].fillna("")
    return frame


def agreement_with_claude(frame: pd.DataFrame) -> pd.Series:
    """Per row: ROUGE-L F1 of a local answer against Claude's answer to the same prompt; NaN otherwise."""
    out = pd.Series(np.nan, index=frame.index)
    if frame.empty:
        return out
    prompt = [hashlib.sha256(f"{s}\x00{m}".encode()).hexdigest() for s, m in zip(frame["system"], frame["messages"])]
    frame = frame.assign(prompt=prompt)
    claude = frame[(frame["decision"] == "escalated") & frame["answer"].notna()].drop_duplicates("prompt")
    reference = dict(zip(claude["prompt"], claude["answer"]))
    local = frame[frame["decision"].isin(LOCAL_DECISIONS) & frame["prompt"].isin(reference)]
    if len(local):
        from qeforge.evaluation.scoring import load_metric

        scores = load_metric("rouge_l").compute(predictions=local["answer"].tolist(),
                                                references=[reference[p] for p in local["prompt"]])
        out[local.index] = scores["rougeL_per_example"]
    return out


def _group_row(group: pd.DataFrame, prices: Prices) -> dict:
    n = len(group)
    local = group["decision"].isin(LOCAL_DECISIONS)
    escalated = group[group["decision"] == "escalated"]
    tokens = group.loc[local, ["prompt_tokens", "completion_tokens"]].fillna(0)
    saved = float(prices.claude_cost(tokens["prompt_tokens"], tokens["completion_tokens"]).sum() - prices.local_cost(int(local.sum())))
    agreement = group["agreement"].dropna()
    return {
        "requests": n,
        "local": int(local.sum()),
        "local_share": float(local.mean()),
        "escalated_share": len(escalated) / n,
        "escalated_by_reason": {r: round(c / n, 4) for r, c in escalated["reason"].value_counts().sort_index().items()},
        "declined_share": float((group["decision"] == "declined").mean()),
        "agreement_with_claude": float(agreement.mean()) if len(agreement) else None,
        "agreement_pairs": len(agreement),
        "usd_saved_per_1k": 1000 * saved / n,
    }


def traffic_report(rows: list[dict], prices: Prices, *, window: str | None = "1D", by: tuple[str, ...] = ()) -> dict:
    """{"total": [...], "windows": [...]}: one record per category (and "none", and "all") in total and
    per `window` (a pandas frequency, e.g. "1h", "1D"; None: no windows), split further by `by` columns
    (e.g. ("caller",))."""
    frame = fleet_frame(rows)
    frame["agreement"] = agreement_with_claude(frame)

    def records(keys: list[str]) -> list[dict]:
        out = []
        for part in (frame, frame.assign(category="all")):
            for key, group in part.groupby(keys + ["category"], sort=True) if len(part) else ():
                out.append({**dict(zip(keys + ["category"], key)), **_group_row(group, prices)})
        return out

    report = {"requests": len(frame), "total": records(list(by))}
    if window:
        frame["window"] = pd.to_datetime(frame["received_at"], utc=True).dt.floor(window).astype(str)
        report["windows"] = records(["window", *by])
    return report


def format_report(report: dict) -> str:
    head = f"{'category':<18} {'requests':>8} {'local':>7} {'escalated':>9} {'declined':>8} {'agree':>6} {'$ saved/1k':>10}  top escalation reasons"
    lines = [f"{report['requests']} fleet requests recorded", head]
    for r in report["total"]:
        label = " ".join(str(r[k]) for k in r if k not in _VALUES and k != "category")
        reasons = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["escalated_by_reason"].items(), key=lambda kv: -kv[1])[:3])
        agree = "-" if r["agreement_with_claude"] is None else f"{r['agreement_with_claude']:.2f}"
        lines.append(f"{(label + ' ' if label else '') + r['category']:<18} {r['requests']:>8} {r['local_share']:>7.0%} "
                     f"{r['escalated_share']:>9.0%} {r['declined_share']:>8.0%} {agree:>6} {r['usd_saved_per_1k']:>10.2f}  {reasons}")
    return "\n".join(lines)


_VALUES = {"requests", "local", "local_share", "escalated_share", "escalated_by_reason", "declined_share",
           "agreement_with_claude", "agreement_pairs", "usd_saved_per_1k"}


def plot_traffic(report: dict, path: str | Path, title: str = "The fleet's traffic") -> Path:
    """PNG: per category, the share answered locally, escalated (by reason) and declined."""
    from matplotlib.figure import Figure

    rows = [r for r in report["total"] if r["category"] != "all"]
    labels = [" ".join(str(r[k]) for k in r if k not in _VALUES) for r in rows]
    reasons = sorted({k for r in rows for k in r["escalated_by_reason"]})
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 3), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    bottom = np.array([r["local_share"] for r in rows])
    ax.bar(x, bottom, color="tab:green", label="answered locally")
    for i, reason in enumerate(reasons):
        share = np.array([r["escalated_by_reason"].get(reason, 0.0) for r in rows])
        ax.bar(x, share, bottom=bottom, color=f"C{i % 10}", alpha=0.6, label=f"escalated: {reason}")
        bottom = bottom + share
    ax.bar(x, [r["declined_share"] for r in rows], bottom=bottom, color="grey", label="declined")
    for xi, r in zip(x, rows):
        ax.annotate(f"n={r['requests']}", (xi, 1.01), ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("share of requests")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
