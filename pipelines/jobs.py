import dagster as dg

from pipelines.partitions import category_partitions

# Curation and the base model run once per dataset version; each category's adapter is trained,
# evaluated, tuned and registered in one partitioned run; the combined routing policy follows.
curation_job = dg.define_asset_job(
    "curation", selection=dg.AssetSelection.groups("curation") | dg.AssetSelection.assets("base_model")
)
category_job = dg.define_asset_job(
    "category",
    selection=dg.AssetSelection.assets(
        "lora_adapter", "adapter_evaluation", "routing_policy", "registered_adapter", "champion_adapter"
    ),
    partitions_def=category_partitions,
    tags={
        "qeforge/stage": "training",  # dagster.yaml lets one such run hold the machine at a time
        # A failed step here is a verdict (champion_gate) or a deterministic error: re-running it
        # from the failure would only register the same candidate again. MLflow outages are retried
        # inside the step (mlflow_retries); a crashed run worker is still retried by run_retries.
        "dagster/retry_on_asset_or_op_failure": "false",
    },
)
routing_job = dg.define_asset_job("routing", selection=dg.AssetSelection.assets("routing_policies"))
# The fleet's recorded exchanges into the bank (where the new_trajectories sensor counts them), and the
# traffic report on them; hourly (hourly_traffic) and at the end of the main job.
traffic_job = dg.define_asset_job(
    "traffic", selection=dg.AssetSelection.assets("recorded_exchanges") | dg.AssetSelection.groups("traffic")
)
