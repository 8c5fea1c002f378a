import dagster as dg

from pipelines.partitions import category_partitions

# Curation and the base model run once per dataset version; adapters and their evaluation once per
# category partition; the combined routing policy once all four categories are evaluated.
curation_job = dg.define_asset_job(
    "curation", selection=dg.AssetSelection.groups("curation") | dg.AssetSelection.assets("base_model")
)
adapters_job = dg.define_asset_job(
    "adapters",
    selection=dg.AssetSelection.assets("lora_adapter"),
    partitions_def=category_partitions,
    tags={"qeforge/stage": "training"},
)
evaluation_job = dg.define_asset_job(
    "evaluation",
    selection=dg.AssetSelection.assets("adapter_evaluation", "routing_policy"),
    partitions_def=category_partitions,
)
routing_job = dg.define_asset_job("routing", selection=dg.AssetSelection.assets("routing_policies"))
registry_job = dg.define_asset_job(
    "registry",
    selection=dg.AssetSelection.assets("registered_adapter", "champion_adapter"),
    partitions_def=category_partitions,
)
