"""Registry stage: register each evaluated adapter as a candidate; promote it only through a blocking gate."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from pipelines.partitions import category_partitions
from pipelines.resources import mlflow_retries, MLflowResource
from qeforge.categories import registered_model_name

GROUP = "registry"


@dg.asset(
    group_name=GROUP,
    kinds={"mlflow"},
    partitions_def=category_partitions,
    check_specs=[
        # Blocking: when it fails, champion_adapter does not run, so `champion` stays where it was.
        dg.AssetCheckSpec("champion_gate", asset="registered_adapter", blocking=True,
                          description="Candidate beats its base, loads and answers, and is not credibly worse than the champion"),
    ],
)
def registered_adapter(
    context: dg.AssetExecutionContext,
    lora_adapter: dict,
    adapter_evaluation: dict,
    routing_policy: dict,
    curated_datasets: dict,
    mlflow: MLflowResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """A new version of qeforge-<category> with lineage, results and a model card; alias `candidate`."""
    from qeforge.model_card import build_card
    from qeforge.registry import client_for, lineage_tags, register_candidate
    from qeforge.training.tracking import git_commit

    category = context.partition_key
    adapter_dir = Path(lora_adapter["adapter_dir"])
    training = json.loads((adapter_dir / "training_summary.json").read_text())
    summary, routing, policy = adapter_evaluation["summary"], routing_policy["routing"], routing_policy["policy"]
    ratio = summary["quality_ratio"]
    tags = lineage_tags(category, training=training, summary=summary, policy=policy,
                        dataset_version=curated_datasets["version"], training_run_id=lora_adapter["mlflow_run_id"],
                        adapter_dir=adapter_dir, git_commit=git_commit())
    card = build_card(category, training=training, summary=summary, routing=routing, policy=policy,
                      dataset=curated_datasets, tags=tags)
    with mlflow_retries():
        version = register_candidate(client_for(mlflow.resolved_tracking_uri()), category,
                                     run_id=lora_adapter["mlflow_run_id"], tags=tags, card=card)
    context.log.info(f"registered {registered_model_name(category)} v{version} as candidate")
    yield dg.Output(
        {"category": category, "name": registered_model_name(category), "version": version, "tags": tags},
        metadata={
            "registered_model": registered_model_name(category),
            "version": int(version),
            "quality_ratio": float(ratio["value"]),
            "quality_ratio_ci_low": float(ratio["ci_low"]),
            "quality_ratio_ci_high": float(ratio["ci_high"]),
            "adapter_size_bytes": int(training["adapter_size_bytes"]),
            "model_card": dg.MetadataValue.md(card),
        },
    )
    yield _champion_gate(context, category, version, tags, mlflow)


def _smoke_answer(base_model: str, adapter_dir: str, prompt: list[dict]) -> str:
    from qeforge.evaluation.generate import generate, load_adapter_model

    model, tokenizer = load_adapter_model(base_model, adapter_dir)
    return generate(model, tokenizer, [prompt], max_new_tokens=32)[0].text


def _champion_gate(context, category: str, version: str, tags: dict, mlflow: MLflowResource) -> dg.AssetCheckResult:
    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.registry import CHAMPION, client_for, promotion_gate, version_by_alias

    prompt = [{"role": "system", "content": SYSTEM_PROMPTS[category]}, {"role": "user", "content": "Smoke test: reply briefly."}]
    try:
        answer = _smoke_answer(tags["base_model"], tags["adapter_dir"], prompt)
        smoke_ok = bool(answer.strip())
    except Exception as e:  # noqa: BLE001 - any load/generate failure fails the gate, with its reason
        context.log.error(f"smoke prompt failed: {type(e).__name__}: {e}")
        answer, smoke_ok = "", False
    with mlflow_retries():
        champion = version_by_alias(client_for(mlflow.resolved_tracking_uri()), category, CHAMPION)
    champion_tags = {**champion.tags, "version": champion.version} if champion else None
    gate = promotion_gate(tags, champion_tags, smoke_ok=smoke_ok)
    return dg.AssetCheckResult(
        check_name="champion_gate",
        passed=gate.passed,
        description="; ".join(gate.reasons) or "all gates passed",
        metadata={
            "candidate_version": int(version),
            "champion_version": int(champion.version) if champion else 0,
            "candidate_quality_ratio": float(tags["quality_ratio"]),
            "candidate_ci_high": float(tags["quality_ratio_ci_high"]),
            "champion_quality_ratio": float(champion.tags["quality_ratio"]) if champion else float("nan"),
            "smoke_answer_chars": len(answer),
            **{f"gate/{k}": v for k, v in gate.checks.items()},
        },
    )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, partitions_def=category_partitions)
def champion_adapter(context: dg.AssetExecutionContext, registered_adapter: dict, mlflow: MLflowResource) -> dg.Output[dict]:
    """`champion` moved to the candidate: runs only after champion_gate (blocking) passed."""
    from qeforge.registry import client_for, promote

    category, version = registered_adapter["category"], registered_adapter["version"]
    with mlflow_retries():
        previous = promote(client_for(mlflow.resolved_tracking_uri()), category, version, actor="dagster",
                           reason=f"champion_gate passed (run {context.run_id})")
    context.log.info(f"{registered_adapter['name']}: champion v{version} (was {previous or 'none'})")
    return dg.Output(
        {"category": category, "name": registered_adapter["name"], "version": version, "previous": previous},
        metadata={"champion_version": int(version), "previous_champion": int(previous) if previous else 0},
    )
