"""IO manager for curation frames: parquet files under QEFORGE_HOME (no pickle)."""


import json
from pathlib import Path

import dagster as dg
import pandas as pd

from pipelines.resources import embedded_default
from qeforge.locations import project_path


class ParquetIOManager(dg.ConfigurableIOManager):
    """DataFrames as parquet, small dicts as JSON, one file per asset (and partition)."""

    base_dir: str = ""

    def _path(self, context, suffix: str, partition: str | None = None) -> Path:
        # InputContext and OutputContext both expose the asset key and partition of the stored value.
        base = project_path(self.base_dir or Path(embedded_default("home")) / "assets")
        parts = list(context.asset_key.path)
        if partition is None and context.has_asset_partitions:
            partition = context.asset_partition_key
        if partition is not None:
            parts.append(partition)
        return base.joinpath(*parts).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if isinstance(obj, pd.DataFrame):
            path = self._path(context, ".parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            obj.to_parquet(path, index=False)
        elif isinstance(obj, dict):
            path = self._path(context, ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        else:
            raise TypeError(f"ParquetIOManager stores DataFrames and dicts, got {type(obj).__name__}")

    def load_input(self, context: dg.InputContext):
        # An unpartitioned asset reading a partitioned one gets {partition: value} for every partition
        # materialized so far (a category never trained is absent; the reader decides what that means).
        if context.has_asset_partitions and (not context.has_partition_key or len(context.asset_partition_keys) > 1):
            return {key: self._load(context, key) for key in context.asset_partition_keys if self._exists(context, key)}
        return self._load(context, None)

    def _exists(self, context: dg.InputContext, partition: str) -> bool:
        return any(self._path(context, suffix, partition).exists() for suffix in (".parquet", ".json"))

    def _load(self, context: dg.InputContext, partition: str | None):
        parquet = self._path(context, ".parquet", partition)
        if parquet.exists():
            return pd.read_parquet(parquet)
        as_json = self._path(context, ".json", partition)
        if as_json.exists():
            return json.loads(as_json.read_text())
        raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized ({parquet} missing)")
