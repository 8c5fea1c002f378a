"""Unattended operation: a weekly refresh, an hourly import of the recorded exchanges (with the traffic
report), a sensor on new trajectories, and the run chain after curation.

curation (schedule or sensor) -> category runs, one per affected partition -> routing policy.
The category list travels as the run tag `qeforge/categories` ("all" from the schedule).
"""

import dagster as dg

from pipelines.jobs import category_job, curation_job, routing_job, traffic_job
from pipelines.resources import (RESOURCES, AutomationSettings, CurationSettings, DatasetStoreResource,
                                 LanceDBResource)
from qeforge.categories import CATEGORIES

CATEGORIES_TAG = "qeforge/categories"


def weekly_refresh(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_refresh",
        cron_schedule=cron,
        job=curation_job,
        tags={CATEGORIES_TAG: "all"},
        execution_timezone="UTC",
        description="Refresh datasets, then retrain, evaluate and register every category",
    )


def hourly_traffic(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="hourly_traffic",
        cron_schedule=cron,
        job=traffic_job,
        execution_timezone="UTC",
        description="Import the gateway's recorded exchanges into the bank and report the fleet's traffic",
    )


@dg.sensor(job=curation_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def new_trajectories(
    context: dg.SensorEvaluationContext, lancedb: LanceDBResource, curation: CurationSettings,
    dataset_store: DatasetStoreResource, automation: AutomationSettings,
):
    """Request curation when a category gained enough eligible trajectories since the current dataset version."""
    from qeforge import store
    from qeforge.curation.export import load_manifest
    from qeforge.curation.freshness import new_eligible_counts
    from qeforge.curation.gate import GATE_COLUMNS

    frame = store.trajectories(lancedb.connect()).to_arrow().select(GATE_COLUMNS).to_pandas()
    manifest = load_manifest(dataset_store.path())
    counts = new_eligible_counts(frame, manifest, curation.gate())
    threshold = automation.resolved_new_trajectories_threshold()
    affected = sorted(c for c, n in counts.items() if n >= threshold)
    if not affected:
        return dg.SkipReason(f"new eligible trajectories {counts} below {threshold} per category")
    version = manifest["version"] if manifest else "none"
    return dg.RunRequest(
        # One request per (dataset version, affected set, counts): a tick that sees the same state asks nothing new.
        run_key=f"{version}:{','.join(affected)}:{','.join(str(counts[c]) for c in affected)}",
        tags={CATEGORIES_TAG: ",".join(affected), "qeforge/trigger": "new_trajectories"},
    )


def categories_from_tag(value: str | None) -> list[str]:
    if not value or value == "all":
        return list(CATEGORIES)
    return [c for c in value.split(",") if c in CATEGORIES]


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[curation_job], request_job=category_job,
                      default_status=dg.DefaultSensorStatus.STOPPED)
def after_curation(context: dg.RunStatusSensorContext):
    """Train, evaluate and register the categories the curation run was for: one partition run each."""
    run = context.dagster_run
    for category in categories_from_tag(run.tags.get(CATEGORIES_TAG)):
        yield dg.RunRequest(run_key=f"{run.run_id}:{category}", partition_key=category,
                            tags={CATEGORIES_TAG: category, "qeforge/after": run.run_id})


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[category_job], request_job=routing_job,
                      default_status=dg.DefaultSensorStatus.STOPPED)
def after_category(context: dg.RunStatusSensorContext):
    """Rewrite the combined routing policy after any category changed."""
    return dg.RunRequest(run_key=context.dagster_run.run_id)


# A schedule's cron is fixed when the code location loads, so it is read from the configured resource here.
SCHEDULES = [weekly_refresh(RESOURCES["automation"].resolved_refresh_cron()),
             hourly_traffic(RESOURCES["automation"].traffic_cron)]
SENSORS = [new_trajectories, after_curation, after_category]
