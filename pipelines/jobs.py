import dagster as dg

from pipelines.partitions import category_partitions

# Curation and the base model run once per dataset version; adapters once per category partition.
curation_job = dg.define_asset_job(
    "curation", selection=dg.AssetSelection.groups("curation") | dg.AssetSelection.assets("base_model")
)
adapters_job = dg.define_asset_job(
    "adapters",
    selection=dg.AssetSelection.assets("lora_adapter"),
    partitions_def=category_partitions,
    tags={"qeforge/stage": "training"},
)
