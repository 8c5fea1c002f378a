"""The qeforge code location: `dagster dev` (workspace.yaml / [tool.dg]) loads `defs`."""

import dagster as dg

from assets import curation, evaluation, registry, training
from assets.curation_checks import CURATION_CHECKS
from pipelines.io import ParquetIOManager
from pipelines.jobs import adapters_job, curation_job, evaluation_job, registry_job, routing_job
from pipelines.resources import (
    CurationSettings,
    DatasetStoreResource,
    EvaluationSettings,
    LanceDBResource,
    MLflowResource,
    TrainingSettings,
)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([curation, training, evaluation, registry]),
    asset_checks=[*CURATION_CHECKS, registry.champion_gate],
    jobs=[curation_job, adapters_job, evaluation_job, registry_job, routing_job],
    resources={
        "io_manager": ParquetIOManager(),
        "lancedb": LanceDBResource(),
        "mlflow": MLflowResource(),
        "dataset_store": DatasetStoreResource(),
        "curation": CurationSettings(),
        "training": TrainingSettings(),
        "evaluation": EvaluationSettings(),
    },
)
