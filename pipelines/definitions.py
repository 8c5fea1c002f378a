"""The qeforge code location: `dagster dev` (workspace.yaml / [tool.dg]) loads `defs`."""

import dagster as dg

from assets import curation
from assets.curation_checks import CURATION_CHECKS
from pipelines.io import ParquetIOManager
from pipelines.jobs import curation_job
from pipelines.resources import CurationSettings, DatasetStoreResource, LanceDBResource, MLflowResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([curation]),
    asset_checks=CURATION_CHECKS,
    jobs=[curation_job],
    resources={
        "io_manager": ParquetIOManager(),
        "lancedb": LanceDBResource(),
        "mlflow": MLflowResource(),
        "dataset_store": DatasetStoreResource(),
        "curation": CurationSettings(),
    },
)
