"""Serve what the MLflow registry says: each category's `champion` version, with the routing policy
recorded on that version. A promotion or rollback takes effect on the next load (POST /admin/reload)."""

from __future__ import annotations

from pathlib import Path

from qeforge.categories import CATEGORIES
from qeforge.serving.source import ServedAdapter, Snapshot


class RegistrySource:
    def __init__(self, tracking_uri: str, *, cache_dir: str | Path, alias: str = "champion"):
        """cache_dir: where adapters whose recorded directory is not on this machine are downloaded to."""
        self.tracking_uri, self.cache_dir, self.alias = tracking_uri, Path(cache_dir), alias

    def load(self) -> Snapshot:
        from qeforge.registry import client_for, policy_of, resolve_adapter, version_by_alias

        client = client_for(self.tracking_uri)
        served, bases = {}, set()
        for category in CATEGORIES:
            version = version_by_alias(client, category, self.alias)
            if version is None:
                continue
            path = resolve_adapter(client, version, self.cache_dir)
            served[category] = ServedAdapter(category, str(version.version), path, policy_of(version))
            bases.add(version.tags["base_model"])
        if not served:
            raise FileNotFoundError(f"no registered model has a `{self.alias}` version at {self.tracking_uri}: "
                                    "run `qeforge run` or promote one with `qeforge promote`")
        if len(bases) != 1:
            raise ValueError(f"{self.alias} versions were trained on different base models {sorted(bases)}")
        versions = ",".join(f"{c}:v{a.version}" for c, a in served.items())
        return Snapshot(bases.pop(), served, f"registry {versions}", f"MLflow registry `{self.alias}` at {self.tracking_uri}")
