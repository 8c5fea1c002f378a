"""Evaluation stage: each adapter against Claude on its category's eval spec, then the routing policy."""

import json
from datetime import timedelta
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.metadata import md_image, md_records, md_table
from pipelines.partitions import category_partitions
from pipelines.resources import (mlflow_retries, CurationSettings, EvaluationSettings, LanceDBResource, MLflowResource,
                                 ServingSettings)
from qeforge.categories import CATEGORIES

GROUP = "evaluation"


def _eval_dir(evaluation: EvaluationSettings, category: str, dataset_version: str) -> Path:
    return evaluation.evals_path() / category / dataset_version


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
    partitions_def=category_partitions,
    op_tags={"qeforge/stage": "evaluation"},
    check_specs=[
        dg.AssetCheckSpec("adapter_beats_base", asset="adapter_evaluation",
                          description="The adapter's mean primary-metric score on the eval split is above its base model's"),
        dg.AssetCheckSpec("evaluated_on_test_split_only", asset="adapter_evaluation",
                          description="Reported scores come from the eval split only, and no eval example is in train or validation"),
        dg.AssetCheckSpec("sandbox_contained", asset="adapter_evaluation",
                          description="Every generated test ran in the sandbox and nothing escaped (timeouts and crashes are counted, "
                                      "not fatal); its `isolation` metadata says 'weak isolation' when bubblewrap was missing"),
        # Not blocking: a miscalibrated yardstick is a finding about the evaluation, not about the adapter.
        dg.AssetCheckSpec("reference_scores_its_truth", asset="adapter_evaluation", blocking=False,
                          description="Claude's recorded answers, scored against their own ground truth, reach 90% of the "
                                      "score range; below that the scores measure the evaluation, not the adapter"),
    ],
)
def adapter_evaluation(
    context: dg.AssetExecutionContext,
    lora_adapter: dict,
    base_model: dict,
    curated_datasets: dict,
    evaluation: EvaluationSettings,
    serving: ServingSettings,
    lancedb: LanceDBResource,
    mlflow: MLflowResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Adapter, base and Claude scored by the category's eval spec (evals/tasks/<category>.yaml), with CIs."""
    from qeforge.evaluation import checks
    from qeforge.evaluation.report import headline_scores
    from qeforge.evaluation.run import evaluate_category, split_ids, summarize
    from qeforge.evaluation.spec import load_spec
    from qeforge.evaluation.tracking import log_to_run, numeric_items, plot_scores

    category = context.partition_key
    spec = load_spec(category)
    dataset_dir = Path(curated_datasets["path"]) / category
    out_dir = _eval_dir(evaluation, category, curated_datasets["version"])
    frame = evaluate_category(
        spec, dataset_dir, base_model["name_or_path"], Path(lora_adapter["adapter_dir"]), lancedb.connect(),
        batch_size=evaluation.generation_batch_size, weights=serving.generation_weights(),
        workers=evaluation.sandbox_workers or None, log=context.log.info,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    examples_path = out_dir / "examples.parquet"
    frame.to_parquet(examples_path, index=False)
    summary = summarize(spec, frame, seed=evaluation.seed)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_scores(summary, out_dir / "scores.png")
    with mlflow_retries():
        log_to_run(mlflow.resolved_tracking_uri(), lora_adapter["mlflow_run_id"],
                   metrics=numeric_items("eval", {k: v for k, v in summary.items() if k != "score_range"}),
                   artifacts=[plot], artifact_path="eval", dicts={"summary.json": summary},
                   table=frame.drop(columns=[c for c in frame if c.endswith("_output") and c != "adapter_output"]))

    yield dg.Output(
        {"category": category, "dataset_version": curated_datasets["version"], "examples_path": str(examples_path),
         "adapter_dir": lora_adapter["adapter_dir"], "mlflow_run_id": lora_adapter["mlflow_run_id"], "summary": summary},
        metadata={
            "eval_spec": f"{spec.name} ({spec.digest})",
            "n_eval": summary["n_eval"],
            "n_scored": summary["n_scored"],
            "n_unscorable": summary["n_unscorable"],
            "unscorable_reasons": md_table(summary["unscorable_reasons"], "reason"),
            "ground_truth_sources": md_records([{"reference": name, "source": source, "examples": n}
                                                for name, by in summary["truth_sources"].items() for source, n in by.items()]),
            "rejected_sources": md_records([{"reference": name, "skipped": why, "examples": n}
                                            for name, by in summary["rejected_sources"].items() for why, n in by.items()]),
            "reference_self_score": summary["reference_calibration"]["reference_self_score"],
            "reference_share_of_range": summary["reference_calibration"]["share_of_range"],
            "n_paired_with_claude": summary["n_paired"],
            **headline_scores(summary),
            "target_ratio": spec.target_ratio,
            "meets_target": summary["meets_target"],
            "adapter_gain_over_base": summary["adapter_gain_over_base"],
            "scores": md_records([{"metric": col, **{w: None if v is None else round(v, 3) for w, v in by.items()}} for col, by in summary["detail"].items()]),
            "scores_plot": md_image(plot, "scores with 95% CI"),
            "examples_path": dg.MetadataValue.path(str(examples_path)),
            "mlflow_run_id": lora_adapter["mlflow_run_id"],
            # test-generation only: "weak isolation: …" in plain words when bubblewrap was missing
            **({"sandbox_isolation": summary["sandbox_isolation"]} if summary.get("sandbox_isolation") else {}),
        },
    )

    passed, metadata = checks.adapter_beats_base(summary)
    yield dg.AssetCheckResult(check_name="adapter_beats_base", passed=passed, metadata=metadata)
    evaluated = set(frame.loc[frame["split"] == spec.eval_split, "id"])
    # Only the id column of each split: the check needs no prompts or metadata.
    passed, metadata = checks.evaluated_on_test_split_only(evaluated, split_ids(dataset_dir), summary["eval_split"])
    yield dg.AssetCheckResult(check_name="evaluated_on_test_split_only", passed=passed, metadata=metadata)
    passed, metadata = checks.sandbox_contained(frame)
    yield dg.AssetCheckResult(check_name="sandbox_contained", passed=passed, metadata=metadata)
    passed, metadata = checks.reference_scores_its_truth(summary)
    calibration = summary["reference_calibration"]
    if not passed:
        context.log.error(f"{category}: Claude's recorded answers score {metadata['share_of_range']:.0%} of the range on "
                          f"their own truths (< {metadata['min_share_of_range']:.0%}); unscorable: "
                          f"{calibration['unscorable_reasons']}, sources: {calibration['truth_sources']}, "
                          f"rejected: {calibration['rejected_sources']}")
    yield dg.AssetCheckResult(check_name="reference_scores_its_truth", passed=passed, metadata={
        **metadata,
        "truth_sources": md_records([{"reference": name, "source": source, "examples": n}
                                     for name, by in calibration["truth_sources"].items() for source, n in by.items()]),
        "rejected_sources": md_records([{"reference": name, "skipped": why, "examples": n}
                                        for name, by in calibration["rejected_sources"].items() for why, n in by.items()]),
        "unscorable_reasons": md_table(calibration["unscorable_reasons"], "reason"),
    })


@dg.asset(group_name=GROUP, kinds={"mlflow"}, partitions_def=category_partitions)
def routing_policy(adapter_evaluation: dict, evaluation: EvaluationSettings, mlflow: MLflowResource) -> dg.Output[dict]:
    """This category's threshold: chosen on validation at the target quality, confirmed on test."""
    from qeforge.evaluation.run import policy_entry, tune_routing
    from qeforge.evaluation.spec import load_spec
    from qeforge.evaluation.tracking import log_to_run, numeric_items

    category = adapter_evaluation["category"]
    spec = load_spec(category)
    frame = pd.read_parquet(adapter_evaluation["examples_path"])
    out_dir = _eval_dir(evaluation, category, adapter_evaluation["dataset_version"]) / "routing"
    result = tune_routing(spec, frame, evaluation.prices(), out_dir, seed=evaluation.seed)
    (out_dir / "routing.json").write_text(json.dumps(result, indent=2))
    entry = policy_entry(spec, result, adapter_evaluation["summary"], adapter_dir=adapter_evaluation["adapter_dir"],
                         dataset_version=adapter_evaluation["dataset_version"])
    plots = [Path(p) for p in result["plots"].values()]  # none when there was nothing to tune on
    with mlflow_retries():
        log_to_run(mlflow.resolved_tracking_uri(), adapter_evaluation["mlflow_run_id"],
                   metrics=numeric_items("routing", {k: v for k, v in result.items() if k not in ("plots", "threshold")}),
                   artifacts=[*plots, *([Path(result["sweep_csv"])] if result["sweep_csv"] else [])], artifact_path="routing",
                   dicts={"policy.json": entry, "routing.json": result})
    confirmed = result["confirmed"]
    return dg.Output(
        {"category": category, "policy": entry, "routing": result},
        metadata={
            "signal": result["signal"],
            **{f"auroc/{s}": (v if v is not None else float("nan")) for s, v in result["signal_auroc"].items()},
            "threshold": str(result["threshold"]),
            "local_share": confirmed["local_share"],
            "quality_ratio": confirmed["quality_ratio"],
            "quality_ratio_ci_low": confirmed["quality_ratio_low"],
            "quality_ratio_ci_high": confirmed["quality_ratio_high"],
            "savings_per_1k_usd": confirmed["savings_per_1k"],
            **{f"cpt_{x}": v if v is not None else float("nan") for x, v in result["cpt"].items()},
            "apgr": result["apgr"] if result["apgr"] is not None else float("nan"),
            **({"quality_cost_plot": md_image(result["plots"]["quality_cost"], "quality vs cost"),
                "pgr_plot": md_image(result["plots"]["pgr"], "PGR curve")} if result["plots"] else {}),
            **({"note": result["note"]} if result.get("note") else {}),
        },
    )


# What the shim routes with should be no older than the weekly refresh allows.
@dg.asset(group_name=GROUP, kinds={"json"}, freshness_policy=dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=6)))
def routing_policies(
    context: dg.AssetExecutionContext, routing_policy: dict, adapter_evaluation: dict, evaluation: EvaluationSettings,
    curation: CurationSettings,
) -> dg.Output[dict]:
    """The versioned routing policy for all categories: what the registry and the serving shim read."""
    from qeforge.evaluation.policy import write_policy
    from qeforge.evaluation.run import overall_ratio
    from qeforge.evaluation.spec import load_spec

    # A category with no evaluated adapter yet (the sensor trained only the categories that gained data)
    # has no entry: its requests escalate to Claude, and the overall ratio covers the categories present.
    present = [c for c in CATEGORIES if c in routing_policy and c in adapter_evaluation]
    if not present:
        raise dg.Failure("no routing policy for any category: materialize routing_policy for a category first")
    escalating = [c for c in CATEGORIES if c not in present]
    if escalating:
        context.log.warning(f"no routing policy for {escalating}: their requests escalate to Claude")
    frames = {c: pd.read_parquet(adapter_evaluation[c]["examples_path"]) for c in present}
    overall = overall_ratio(frames, {c: load_spec(c).eval_split for c in present}, curation.target_mix,
                            seed=evaluation.seed)
    overall["target"] = evaluation.overall_target
    overall["meets_target"] = bool(overall["value"] is not None and overall["value"] >= evaluation.overall_target)
    policy, path = write_policy({c: routing_policy[c]["policy"] for c in present}, overall, evaluation.policies_path())
    context.log.info(f"routing policy {policy['version']} at {path}")
    rows = [{"category": c, "signal": p["signal"], "threshold": p["threshold"],
             "local_share": round(p["expected_local_share"], 3), "quality_ratio": round(p["expected_quality_ratio"], 3),
             "adapter_ratio": round(p["adapter_quality_ratio"], 3) if p["adapter_quality_ratio"] is not None else None,
             "target": p["target_ratio"], "savings_per_1k_usd": round(p["expected_savings_per_1k"], 3)}
            for c, p in policy["categories"].items()]
    return dg.Output(
        {"version": policy["version"], "path": str(path)},
        metadata={
            "version": policy["version"],
            "path": dg.MetadataValue.path(str(path)),
            "overall_adapter_quality_ratio": overall["value"] if overall["value"] is not None else float("nan"),
            "overall_ci_low": overall["ci_low"] if overall["ci_low"] is not None else float("nan"),
            "overall_ci_high": overall["ci_high"] if overall["ci_high"] is not None else float("nan"),
            "overall_meets_95pct_target": overall["meets_target"],
            "categories_with_policy": len(present),
            "categories_escalating": ", ".join(escalating) or "none",
            "policy": md_records(rows),
        },
    )
