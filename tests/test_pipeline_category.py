"""One category's partitioned run through Dagster: train, evaluate vs Claude, tune routing, register, gate."""

import dagster as dg
import mlflow
import pytest

from homes import copy_home
from pipelines.definitions import defs
from pipelines.resources import RESOURCES
from qeforge.registry import CHAMPION, promotion_gate, version_by_alias

pytestmark = pytest.mark.slow
CATEGORY = "coverage-analysis"


@pytest.fixture(scope="module")
def category_run(curated_home, tmp_path_factory):
    """The category job's assets for one partition, in a copy of the curated home; its home stays current
    while this module runs. A weak adapter may stay a candidate: that run does not raise."""
    with pytest.MonkeyPatch.context() as mp:
        copy_home(curated_home, tmp_path_factory.mktemp("category"), mp)
        keys = list(defs.resolve_job_def("category").asset_layer.executable_asset_keys)
        yield dg.materialize(list(defs.assets), partition_key=CATEGORY, resources=defs.resources,
                             raise_on_error=False, selection=keys)


def check(run, name: str):
    (found,) = [c for c in run.get_asset_check_evaluations() if c.check_name == name]
    return found


def client():
    return mlflow.MlflowClient(RESOURCES["mlflow"].resolved_tracking_uri())


def test_evaluation_used_the_test_split_only(category_run):
    assert check(category_run, "evaluated_on_test_split_only").passed


def test_every_generated_suite_stayed_in_the_sandbox(category_run):
    assert check(category_run, "sandbox_contained").passed


def test_claude_passes_its_own_exam_on_demo_data(category_run):
    calibration = check(category_run, "reference_scores_its_truth")
    assert calibration.passed and calibration.metadata["share_of_range"].value >= 0.9
    assert "metadata.uncovered_lines" in calibration.metadata["truth_sources"].value


def test_the_quality_ratio_is_the_adapters_mean_over_claudes_on_the_same_examples(category_run):
    summary = category_run.output_for_node("adapter_evaluation")["summary"]
    adapter, base, claude = (summary[f"{w}_score"]["value"] for w in ("adapter", "base", "claude"))
    assert summary["n_paired"] > 0 and claude > 0
    assert summary["quality_ratio"]["value"] == pytest.approx(adapter / claude)
    assert summary["base_quality_ratio"]["value"] == pytest.approx(base / claude)
    assert summary["adapter_gain_over_base"] == pytest.approx(adapter - base)


def test_quality_ratio_lies_inside_its_interval(category_run):
    ratio = category_run.output_for_node("adapter_evaluation")["summary"]["quality_ratio"]
    assert 0 <= ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"]


def test_routing_policy_names_a_signal_and_a_local_share(category_run):
    policy = category_run.output_for_node("routing_policy")["policy"]
    assert policy["signal"] in ("mean_logprob", "knn_similarity") and 0 <= policy["expected_local_share"] <= 1


def test_registered_version_carries_lineage_and_model_card(category_run, curated_home):
    registered = category_run.output_for_node("registered_adapter")
    version = client().get_model_version(registered["name"], registered["version"])
    assert version.tags["dataset_version"] == curated_home.datasets["version"]
    assert "Quality vs Claude" in version.description


def test_evaluation_and_routing_are_logged_to_the_training_run(category_run):
    run_id = category_run.output_for_node("registered_adapter")["tags"]["training_run_id"]
    metrics = client().get_run(run_id).data.metrics
    assert {"eval/quality_ratio/value", "routing/tuned/local_share"} <= set(metrics)


def test_champion_gate_reports_the_library_verdict(category_run):
    gate = check(category_run, "champion_gate")
    tags = category_run.output_for_node("registered_adapter")["tags"]
    # The first version of a model has no champion to compare with.
    verdict = promotion_gate(tags, None, smoke_ok=gate.metadata["gate/smoke_answer"].value)
    assert gate.passed == verdict.passed


def test_champion_alias_moves_only_when_the_gate_passed(category_run):
    champion = version_by_alias(client(), CATEGORY, CHAMPION)
    assert (champion is not None) == check(category_run, "champion_gate").passed
