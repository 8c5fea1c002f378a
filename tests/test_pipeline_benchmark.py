"""Rows shaped like ClassEval / CoverageEval / FlakyLens / human reviews, no demo metadata, through every
stage: import -> curation -> training -> evaluation -> routing -> registry -> report."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import mlflow
import pytest

from homes import use_home
from pipelines.definitions import defs
from pipelines.resources import RESOURCES, TrainingSettings
from qeforge.categories import CATEGORIES

pytestmark = pytest.mark.slow
BENCHMARK = Path(__file__).parent / "fixtures" / "benchmark_trajectories.jsonl"


def qeforge(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "qeforge.cli", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    before = BENCHMARK.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, tmp_path_factory.mktemp("benchmark") / "qeforge-home")
        imported = qeforge("import", "--format", "jsonl", str(BENCHMARK))
        resources = {**defs.resources, "training": TrainingSettings(base_pretrain_steps=30)}
        assets = list(defs.assets)
        curation = dg.materialize(assets, resources=resources,
                                  selection=dg.AssetSelection.groups("curation") | dg.AssetSelection.assets("base_model"))
        job_keys = list(defs.resolve_job_def("category").asset_layer.executable_asset_keys)
        # A weak adapter may stay a candidate: the blocking champion gate is a verdict, not a crash.
        runs = {c: dg.materialize(assets, partition_key=c, resources=resources, selection=job_keys, raise_on_error=False)
                for c in CATEGORIES}
        dg.materialize(assets, resources=resources, selection=["routing_policies"])
        yield SimpleNamespace(imported=imported, curation=curation, runs=runs, before=before,
                              report=json.loads(qeforge("report", "--json"))["categories"], table=qeforge("report"))


def metadata(run, node: str) -> dict:
    return {k: v.value for k, v in run.asset_materializations_for_node(node)[0].metadata.items()}


def test_import_quarantines_the_one_broken_row(benchmark):
    assert "read 50, imported 49, updated 0, already present 0, quarantined 1" in benchmark.imported


def test_the_failed_trajectory_is_gated_out(benchmark):
    assert metadata(benchmark.curation, "quality_gated")["dagster/row_count"] == 48


def test_dedup_removes_the_reexport_and_the_reworded_request(benchmark):
    dedup = metadata(benchmark.curation, "deduplicated")
    assert (dedup["removed_exact"], dedup["removed_semantic"], dedup["dagster/row_count"]) == (1, 1, 46)
    assert "Please write unittest tests for BankAccount.deposit" in dedup["sample_pairs"]


def test_dedup_keeps_rows_that_share_only_the_task_context(benchmark):
    assert metadata(benchmark.curation, "deduplicated")["task_only_matches_kept"] > 0


def test_every_kept_row_is_used(benchmark):
    balanced = metadata(benchmark.curation, "balanced")
    assert {c: balanced[f"used/{c}"] for c in CATEGORIES} == {
        "test-generation": 12, "coverage-analysis": 12, "flaky-detection": 12, "code-review": 10}


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_is_registered(benchmark, category):
    assert benchmark.runs[category].output_for_node("registered_adapter")["version"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_unscorable_count_is_the_same_in_dagster_mlflow_and_the_summary(benchmark, category):
    run = benchmark.runs[category]
    evaluation = run.output_for_node("adapter_evaluation")
    recorded = metadata(run, "adapter_evaluation")["n_unscorable"]
    logged = mlflow.MlflowClient(RESOURCES["mlflow"].resolved_tracking_uri()).get_run(evaluation["mlflow_run_id"])
    assert recorded == logged.data.metrics["eval/n_unscorable"] == evaluation["summary"]["n_unscorable"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_is_scored_against_claude(benchmark, category):
    summary = benchmark.runs[category].output_for_node("adapter_evaluation")["summary"]
    assert summary["n_scored"] > 0 and summary["claude_score"]["value"] is not None


def test_coverage_truth_comes_from_the_annotated_task(benchmark):
    summary = benchmark.runs["coverage-analysis"].output_for_node("adapter_evaluation")["summary"]
    assert set(summary["truth_sources"]["uncovered_lines"]) == {"task.annotated_uncovered_lines"}


def test_flaky_cause_comes_from_the_parsed_reference(benchmark):
    summary = benchmark.runs["flaky-detection"].output_for_node("adapter_evaluation")["summary"]
    assert summary["truth_sources"]["cause"] == {"reference.parsed.cause": 2}


def test_report_counts_the_task_without_code_as_unscorable(benchmark):
    # The task without code lands in the test split: counted with its reason, left out of the scores.
    entry = benchmark.report["test-generation"]
    assert (entry["unscorable_reasons"], entry["n_unscorable"], entry["n_paired"]) == ({"no_code_block": 1}, 1, 1)


def test_report_table_names_the_unscorable_reason(benchmark):
    assert "test-generation 1 no_code_block" in benchmark.table


def test_the_fixture_file_is_never_modified(benchmark):
    assert BENCHMARK.read_bytes() == benchmark.before


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_passes_its_evaluation_checks(benchmark, category):
    checks = {c.check_name: c.passed for c in benchmark.runs[category].get_asset_check_evaluations()}
    assert (checks["evaluated_on_test_split_only"], checks["sandbox_contained"]) == (True, True)
