"""The weekly schedule, the new-trajectories sensor and the run chain after curation: what each requests."""

import json

import dagster as dg
import pandas as pd
import pytest

from conftest import good_row
from pipelines import automation
from pipelines.definitions import defs
from pipelines.resources import AutomationSettings, CurationSettings, DatasetStoreResource, LanceDBResource
from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.curation.freshness import new_eligible_counts
from qeforge.curation.gate import GateRules
from qeforge.ingest import import_records


def test_new_eligible_counts_subtract_what_the_current_version_already_saw():
    frame = pd.DataFrame([
        {"category": "code-review", "outcome": "success", "quality": 0.9, "confidence": 0.9, "usage_count": 5},
        {"category": "code-review", "outcome": "success", "quality": 0.9, "confidence": 0.9, "usage_count": 5},
        {"category": "code-review", "outcome": "failure", "quality": 0.9, "confidence": 0.9, "usage_count": 5},
        {"category": "flaky-detection", "outcome": "success", "quality": 0.5, "confidence": 0.9, "usage_count": 5},
    ]).assign(domain="", task="a task")
    assert new_eligible_counts(frame, None, GateRules())["code-review"] == 2
    manifest = {"report": {"code-review": {"gated_recorded": 1}}}
    counts = new_eligible_counts(frame, manifest, GateRules())
    assert counts == {c: (1 if c == "code-review" else 0) for c in CATEGORIES}


def test_weekly_schedule_requests_a_full_refresh():
    schedule = next(s for s in defs.schedules if s.name == "weekly_refresh")
    assert schedule.cron_schedule == "0 3 * * 1"
    assert schedule.job_name == "curation"
    data = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=pd.Timestamp("2026-11-23T03:00Z")))
    (request,) = data.run_requests
    assert request.tags[automation.CATEGORIES_TAG] == "all"


def _sensor_resources(home, threshold: int):
    return {
        "lancedb": LanceDBResource(uri=str(home / "lancedb")),
        "curation": CurationSettings(),
        "dataset_store": DatasetStoreResource(root=str(home / "datasets")),
        "automation": AutomationSettings(new_trajectories_threshold=threshold),
    }


def test_sensor_requests_curation_only_for_categories_past_the_threshold(qe_home):
    db = store.connect(str(qe_home / "lancedb"))
    rows = [good_row(i, category="code-review") for i in range(4)] + [good_row(10 + i, category="flaky-detection") for i in range(2)]
    import_records(db, [(json.dumps(r), r) for r in rows], source="test")
    resources = _sensor_resources(qe_home, threshold=3)

    result = automation.new_trajectories(dg.build_sensor_context(resources=resources))
    assert isinstance(result, dg.RunRequest)
    assert result.tags[automation.CATEGORIES_TAG] == "code-review"  # flaky-detection has 2 < 3

    # Once a dataset version has seen them, nothing is new.
    (qe_home / "datasets" / "v1").mkdir(parents=True)
    (qe_home / "datasets" / "v1" / "manifest.json").write_text(json.dumps(
        {"version": "v1", "report": {"code-review": {"gated_recorded": 4}, "flaky-detection": {"gated_recorded": 2}}}))
    (qe_home / "datasets" / "CURRENT").write_text("v1\n")
    skipped = automation.new_trajectories(dg.build_sensor_context(resources=resources))
    assert isinstance(skipped, dg.SkipReason)


@pytest.mark.parametrize("tag, expected", [("code-review,flaky-detection", ["code-review", "flaky-detection"]),
                                           ("all", list(CATEGORIES))])
def test_after_curation_requests_one_partition_run_per_affected_category(tag, expected):
    @dg.asset
    def stand_in():
        return 1

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([stand_in], instance=instance, tags={automation.CATEGORIES_TAG: tag})
    context = dg.build_run_status_sensor_context(
        sensor_name="after_curation", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(),
    )
    requests = list(automation.after_curation(context))
    assert [r.partition_key for r in requests] == expected
    assert len({r.run_key for r in requests}) == len(expected)


def test_only_an_unreachable_mlflow_retries_the_step():
    from pipelines.resources import mlflow_retries, transient_mlflow_error

    assert transient_mlflow_error(Exception("API request to http://m:5000 failed: Max retries exceeded with url"))
    assert not transient_mlflow_error(KeyError("ci_low"))
    with pytest.raises(dg.RetryRequested):
        with mlflow_retries():
            raise ConnectionError("Connection refused")
    with pytest.raises(KeyError):
        with mlflow_retries():
            raise KeyError("ci_low")


@pytest.mark.parametrize(("job_name", "retried"), [("category", False), ("curation", True)])
def test_run_retries_skip_a_failed_category_step_but_not_a_failed_curation_step(job_name, retried):
    """A failed champion_gate fails its step; retrying it would register the same candidate again."""
    from dagster._core.events import RunFailureReason
    from dagster._core.execution.retries import auto_reexecution_should_retry_run
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    job = defs.resolve_job_def(job_name)
    retries = {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": True}  # as dagster_home/dagster.yaml
    with dg.instance_for_test(overrides={"run_retries": retries}) as instance:
        run = instance.add_run(DagsterRun(job_name=job_name, run_id="a" * 32, status=DagsterRunStatus.FAILURE,
                                          tags=dict(job.tags)))
        assert auto_reexecution_should_retry_run(instance, run, RunFailureReason.STEP_FAILURE) is retried
        assert auto_reexecution_should_retry_run(instance, run, RunFailureReason.UNEXPECTED_TERMINATION) is True
