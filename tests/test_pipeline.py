"""The curation graph end to end on a small demo ReasoningBank, through Dagster."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from datasets import load_from_disk

import mlflow

from assets.training import base_model, lora_adapter
from pipelines.definitions import defs
from pipelines.resources import MLflowResource, TrainingSettings
from qeforge.categories import CATEGORIES


def materialize_curation():
    job = defs.resolve_job_def("curation")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=True)


@pytest.fixture
def demo_bank(qe_home, tmp_path):
    from qeforge.demo import write_demo_jsonl
    from qeforge.ingest import import_jsonl
    from pipelines.resources import LanceDBResource

    path = write_demo_jsonl(tmp_path / "demo.jsonl", n=600, seed=0, with_embeddings=False)
    summary = import_jsonl(LanceDBResource().connect(), path)
    return path, summary


def test_curation_graph_materializes_with_passing_checks(demo_bank, qe_home):
    _, summary = demo_bank
    assert summary.imported > 0 and summary.quarantined_total > 0
    result = materialize_curation()
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "schema_valid": True,
        "quarantine_rate_below_bound": True,
        "rows_pass_gate": True,
        "no_row_dropped_below_cap": True,
        "splits_non_empty": True,
        "no_cross_split_leakage": True,
    }
    out = result.output_for_node("curated_datasets")
    for category in CATEGORIES:
        dd = load_from_disk(f"{out['path']}/{category}")
        assert set(dd) == {"train", "validation", "test"}
        roles = [m["role"] for m in dd["train"][0]["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert dd["train"].num_rows == out["splits"][category]["train"] > 0
    dedup = result.asset_materializations_for_node("deduplicated")[0].metadata
    assert dedup["removed_exact"].value + dedup["removed_semantic"].value > 0  # the demo plants duplicates

    # Same input -> same dataset version, and the existing version is reused rather than rewritten.
    again = materialize_curation().output_for_node("curated_datasets")
    assert again["version"] == out["version"]

    shown = subprocess.run(
        [sys.executable, "-m", "qeforge.cli", "datasets", "show", "--json"], capture_output=True, text=True, check=True
    )
    manifest = json.loads(shown.stdout)
    assert manifest["version"] == out["version"] and manifest["splits"] == out["splits"]
    corpus = manifest["report"]["corpus"]
    assert corpus["quarantined"] == summary.quarantined_total and corpus["dedup_removed"] > 0
    for category in CATEGORIES:
        counts = manifest["report"][category]
        assert counts["used"] == sum(out["splits"][category].values())
        assert counts["after_dedup_and_categorization"] - counts["dropped_by_cap"] == counts["used"]
        assert counts["dropped_by_cap"] == 0  # no cap: every good row reaches its category's dataset

    # Training through Dagster: the tiny base, then one category partition, logged to MLflow.
    resources = {**defs.resources, "training": TrainingSettings(base_pretrain_steps=30)}
    assets = list(defs.assets)
    dg.materialize(assets, selection=[base_model.key], resources=resources)
    run = dg.materialize(assets, selection=[lora_adapter.key], partition_key="test-generation", resources=resources)
    adapter = run.output_for_node("lora_adapter")
    checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
    assert checks == {"adapter_beats_base_val_loss": True}
    assert adapter["val_loss"] < adapter["base_val_loss"]
    mlflow_run = mlflow.MlflowClient(MLflowResource().resolved_tracking_uri()).get_run(adapter["mlflow_run_id"])
    assert mlflow_run.data.params["dataset_hash"] and "eval_loss" in mlflow_run.data.metrics
    listed = subprocess.run([sys.executable, "-m", "qeforge.cli", "adapters", "list", "--json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(listed.stdout)["test-generation"]["mlflow_run_id"] == adapter["mlflow_run_id"]

    # One category end to end: train, evaluate vs Claude, tune routing, register, gate, promote.
    category = "coverage-analysis"
    run = dg.materialize(assets, partition_key=category, resources=resources, raise_on_error=False,
                         selection=list(defs.resolve_job_def("category").asset_layer.executable_asset_keys))
    checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
    assert checks["evaluated_on_test_split_only"] and checks["sandbox_contained"]
    summary = run.output_for_node("adapter_evaluation")["summary"]
    # A 30-step base makes a weak adapter: whether it beats its base decides the gate, either way.
    assert checks["champion_gate"] == checks["adapter_beats_base"] == (summary["adapter_gain_over_base"] > 0)
    promoted = [e.asset_key.to_user_string() for e in run.get_asset_materialization_events()]
    assert ("champion_adapter" in promoted) == checks["champion_gate"]
    assert summary["n_paired"] > 0 and summary["claude_score"]["value"] > summary["adapter_score"]["value"]
    low, ratio, high = (summary["quality_ratio"][k] for k in ("ci_low", "value", "ci_high"))
    assert 0 <= low <= ratio <= high
    policy = run.output_for_node("routing_policy")["policy"]
    assert policy["signal"] in ("mean_logprob", "knn_similarity") and 0 <= policy["expected_local_share"] <= 1
    registered = run.output_for_node("registered_adapter")
    version = mlflow.MlflowClient(MLflowResource().resolved_tracking_uri()).get_model_version(registered["name"], registered["version"])
    assert version.tags["dataset_version"] == out["version"] and "Quality vs Claude" in version.description
    eval_run = mlflow.MlflowClient(MLflowResource().resolved_tracking_uri()).get_run(registered["tags"]["training_run_id"])
    assert "eval/quality_ratio/value" in eval_run.data.metrics and "routing/tuned/local_share" in eval_run.data.metrics


def test_info_reports_locations_under_qeforge_home(qe_home):
    shown = subprocess.run([sys.executable, "-m", "qeforge.cli", "info", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(shown.stdout)
    assert info["lancedb_uri"] == str(qe_home / "lancedb")
    assert info["mlflow_tracking_uri"] == f"sqlite:///{qe_home / 'mlflow' / 'mlflow.db'}"
    assert info["datasets_dir"] == str(qe_home / "datasets")


def test_import_cli_counts_and_exit_code(qe_home, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "task": "t", "output": "o", "model": "m", "outcome": "success", "quality": 0.9, "confidence": 0.9}\n{oops\n')
    run = subprocess.run([sys.executable, "-m", "qeforge.cli", "import", "--format", "jsonl", str(path)], capture_output=True, text=True)
    assert run.returncode == 0
    assert "read 2, imported 1, updated 0, already present 0, quarantined 1" in run.stdout
    assert "curation gate: 0 of 1 trajectories passed the gate; failing (a row can fail several): 1 usage_below_min" in run.stdout
    assert "malformed_json: 1" in run.stdout
    missing = subprocess.run([sys.executable, "-m", "qeforge.cli", "import", "--format", "jsonl", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_empty_bank_fails_with_a_clear_message(qe_home):
    result = defs.resolve_job_def("curation").execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("raw_trajectories")
    assert "qeforge demo-data" in failure.error.message


BENCHMARK = Path(__file__).parent / "fixtures" / "benchmark_trajectories.jsonl"


def test_benchmark_shaped_trajectories_go_through_every_stage_unmodified(qe_home):
    """Rows shaped like ClassEval / CoverageEval / FlakyLens / human reviews, no demo metadata:
    import -> curation -> training -> evaluation -> routing -> registry."""
    before = BENCHMARK.read_bytes()
    imported = subprocess.run([sys.executable, "-m", "qeforge.cli", "import", "--format", "jsonl", str(BENCHMARK)],
                              capture_output=True, text=True, check=True)
    assert "read 50, imported 49, updated 0, already present 0, quarantined 1" in imported.stdout

    resources = {**defs.resources, "training": TrainingSettings(base_pretrain_steps=30)}
    assets = list(defs.assets)
    curation = dg.materialize(assets, resources=resources,
                              selection=dg.AssetSelection.groups("curation") | dg.AssetSelection.assets("base_model"))
    meta = lambda node: {k: v.value for k, v in curation.asset_materializations_for_node(node)[0].metadata.items()}  # noqa: E731
    assert meta("quality_gated")["dagster/row_count"] == 48  # the failed trajectory is gated out
    dedup = meta("deduplicated")
    # Removed: the re-exported slugify row (exact) and the reworded deposit request (same suite).
    assert (dedup["removed_exact"], dedup["removed_semantic"], dedup["dagster/row_count"]) == (1, 1, 46)
    assert "Please write unittest tests for BankAccount.deposit" in dedup["sample_pairs"]
    assert dedup["task_only_matches_kept"] > 0  # one class, other methods; one function, other tests
    balanced = meta("balanced")
    assert balanced["dropped_by_cap"] == 0 and balanced["dagster/row_count"] == 46
    assert {c: balanced[f"used/{c}"] for c in CATEGORIES} == {
        "test-generation": 12, "coverage-analysis": 12, "flaky-detection": 12, "code-review": 10}

    job_keys = list(defs.resolve_job_def("category").asset_layer.executable_asset_keys)
    summaries = {}
    for category in CATEGORIES:
        # A weak 2-step adapter may stay a candidate: the blocking champion gate is a verdict, not a crash.
        run = dg.materialize(assets, partition_key=category, resources=resources, selection=job_keys, raise_on_error=False)
        evaluation = run.output_for_node("adapter_evaluation")
        summaries[category] = evaluation["summary"]
        assert run.output_for_node("registered_adapter")["version"]
        recorded = run.asset_materializations_for_node("adapter_evaluation")[0].metadata["n_unscorable"].value
        logged = mlflow.MlflowClient(MLflowResource().resolved_tracking_uri()).get_run(evaluation["mlflow_run_id"]).data.metrics
        assert recorded == logged["eval/n_unscorable"] == evaluation["summary"]["n_unscorable"]
        checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
        assert checks["evaluated_on_test_split_only"] and checks["sandbox_contained"]
        assert run.success or checks["champion_gate"] is False
    assert all(s["n_scored"] > 0 and s["claude_score"]["value"] is not None for s in summaries.values())
    assert set(summaries["coverage-analysis"]["truth_sources"]["uncovered_lines"]) == {"task.annotated_uncovered_lines"}
    assert summaries["flaky-detection"]["truth_sources"]["cause"] == {"reference.parsed.cause": 2}
    dg.materialize(assets, resources=resources, selection=["routing_policies"])

    shown = subprocess.run([sys.executable, "-m", "qeforge.cli", "report", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(shown.stdout)["categories"]
    # The task without code lands in the test split: counted with its reason, left out of the scores.
    assert report["test-generation"]["unscorable_reasons"] == {"no_code_block": 1}
    assert report["test-generation"]["n_unscorable"] == 1 and report["test-generation"]["n_paired"] == 1
    table = subprocess.run([sys.executable, "-m", "qeforge.cli", "report"], capture_output=True, text=True, check=True).stdout
    assert "test-generation 1 no_code_block" in table
    assert BENCHMARK.read_bytes() == before
