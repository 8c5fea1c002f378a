import dagster as dg

curation_job = dg.define_asset_job("curation", selection=dg.AssetSelection.groups("curation"))
