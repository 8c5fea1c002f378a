"""The fleet's traffic through the gateway: the figure the fleet's goals are set on (local share at Claude's quality)."""

import tempfile
from pathlib import Path

import dagster as dg

from assets.metadata import md_image, md_records
from pipelines.resources import EvaluationSettings, LanceDBResource
from qeforge.traffic import plot_traffic, read_exchanges, traffic_report

GROUP = "traffic"


@dg.asset(group_name=GROUP, kinds={"lancedb", "pandas"})
def fleet_traffic(context: dg.AssetExecutionContext, lancedb: LanceDBResource, evaluation: EvaluationSettings) -> dg.Output[dict]:
    """Per category and "none", and per day: requests, the share answered locally, escalated (by reason)
    and declined, agreement with Claude where Claude's answer to the same prompt is known, dollars saved
    per 1k requests (qeforge/traffic.py). qeforge's own checks are left out."""
    report = traffic_report(read_exchanges(lancedb.connect()), evaluation.prices(), window="1D")
    everything = next((r for r in report["total"] if r["category"] == "all"), None)
    metadata = {"requests": report["requests"]}
    if everything:
        with tempfile.TemporaryDirectory() as tmp:
            plot = md_image(plot_traffic(report, Path(tmp) / "traffic.png"), "the fleet's traffic by category")
        metadata |= {
            "local_share": everything["local_share"],
            "escalated_share": everything["escalated_share"],
            "declined_share": everything["declined_share"],
            "usd_saved_per_1k": everything["usd_saved_per_1k"],
            **({"agreement_with_claude": everything["agreement_with_claude"]}
               if everything["agreement_pairs"] else {}),
            "agreement_pairs": everything["agreement_pairs"],
            **{f"local_share/{r['category']}": r["local_share"] for r in report["total"] if r["category"] != "all"},
            "by_category": md_records([{k: v for k, v in r.items() if k != "escalated_by_reason"} for r in report["total"]]),
            "by_day": md_records([{k: v for k, v in r.items() if k != "escalated_by_reason"} for r in report["windows"]]),
            "plot": plot,
        }
    else:
        context.log.info("no fleet exchanges recorded yet: point the fleet at `qeforge serve`")
    return dg.Output(report, metadata=metadata)
