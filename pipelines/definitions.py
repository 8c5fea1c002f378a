"""The qeforge code location: `dagster dev` (workspace.yaml / [tool.dg]) loads `defs`."""

import dagster as dg

from assets import curation, evaluation, registry, traffic, training
from assets.curation_checks import CURATION_CHECKS
from pipelines.automation import SCHEDULES, SENSORS
from pipelines.io import ParquetIOManager
from pipelines.jobs import category_job, curation_job, routing_job, traffic_job
from pipelines.resources import RESOURCES

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([curation, training, evaluation, registry, traffic]),
    asset_checks=CURATION_CHECKS,
    jobs=[curation_job, category_job, routing_job, traffic_job],
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"io_manager": ParquetIOManager(), **RESOURCES},
)
