"""What the shim serves: a base model, one adapter per category and each category's routing policy.

`AdapterSource.load()` returns an immutable Snapshot; the engine loads one at start and on every
reload. DirectorySource serves given adapter dirs; LatestLocalSource re-scans the local models dir
and the current routing policy on every load. `default_source()` is the one place to plug in
another source (e.g. the MLflow registry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qeforge.categories import CATEGORIES
from qeforge.training.adapters import latest_adapters

# Without a policy every category answers locally: threshold -inf, signal mean_logprob.
ALWAYS_LOCAL = {"signal": "mean_logprob", "threshold": "-inf"}


@dataclass(frozen=True)
class ServedAdapter:
    category: str
    version: str  # registry version or dataset version
    path: Path  # PEFT dir
    policy: dict  # the category's routing policy entry (signal, threshold, ...)
    onnx_dir: Path | None = None


@dataclass(frozen=True)
class Snapshot:
    base_model: str
    adapters: dict[str, ServedAdapter]
    policy_version: str | None
    source: str  # human-readable: where this came from


class AdapterSource(Protocol):
    def load(self) -> Snapshot: ...


def read_policy(path: str | Path) -> dict:
    """A policy JSON file, or a routing_policies dir (its CURRENT policy)."""
    from qeforge.evaluation.policy import load_policy

    path = Path(path)
    return load_policy(path) if path.is_dir() else json.loads(path.read_text())


def current_policy(policies_dir: str | Path | None) -> dict | None:
    """The CURRENT routing policy under policies_dir, or None (no dir, or nothing written yet)."""
    root = Path(policies_dir) if policies_dir else None
    return read_policy(root) if root and (root / "CURRENT").exists() else None


def recorded_base_model(adapter_dir: str | Path) -> str | None:
    """The base an adapter was trained on: training_summary.json, else adapter_config.json."""
    for name, key in (("training_summary.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        f = Path(adapter_dir) / name
        if f.exists() and json.loads(f.read_text()).get(key):
            return json.loads(f.read_text())[key]
    return None


class DirectorySource:
    """Fixed adapter dirs (mutable `adapters` mapping: the next load() sees changes)."""

    def __init__(self, base_model: str, adapters: dict[str, str | Path], policy: dict | None = None):
        unknown = sorted(set(adapters) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
        self.base_model = str(base_model)
        self.adapters = dict(adapters)
        self.policy = policy

    def load(self) -> Snapshot:
        entries = (self.policy or {}).get("categories", {})
        served = {}
        for category, path in self.adapters.items():
            path = Path(path)
            if not (path / "adapter_config.json").exists():
                raise FileNotFoundError(f"{category}: {path} is not a PEFT adapter dir (no adapter_config.json)")
            served[category] = ServedAdapter(category, path.name, path, dict(entries.get(category, ALWAYS_LOCAL)))
        where = ", ".join(f"{c}={a.path}" for c, a in served.items())
        return Snapshot(self.base_model, served, (self.policy or {}).get("version"), f"directories: {where}")


class LatestLocalSource:
    """The newest adapter per category under the adapters dir and the current routing policy, re-read per load."""

    def __init__(self, adapters_dir: str | Path, base_model: str | None = None, policy: dict | None = None,
                 policies_dir: str | Path | None = None):
        self.adapters_dir = Path(adapters_dir)
        self.base_model = base_model
        self.policy = policy
        self.policies_dir = policies_dir

    def load(self) -> Snapshot:
        found = latest_adapters(self.adapters_dir)
        if not found:
            raise FileNotFoundError(f"no trained adapters under {self.adapters_dir}: run `qeforge run` first")
        bases = {a["base_model"] for a in found.values() if a["base_model"]}
        base = self.base_model or (bases.pop() if len(bases) == 1 else None)
        if base is None:
            raise ValueError(f"adapters record different (or no) base models {sorted(bases)}; pass --base")
        snap = DirectorySource(base, {c: a["adapter_dir"] for c, a in found.items()}, self.policy or current_policy(self.policies_dir)).load()
        return Snapshot(snap.base_model, snap.adapters, snap.policy_version, f"latest local adapters under {self.adapters_dir}")


class FirstAvailableSource:
    """The first of several sources that has something to serve (e.g. the registry, then local files)."""

    def __init__(self, *sources: AdapterSource):
        self.sources = sources

    def load(self) -> Snapshot:
        reasons = []
        for source in self.sources:
            try:
                return source.load()
            except (FileNotFoundError, ValueError) as e:
                reasons.append(f"{type(source).__name__}: {e}")
        raise FileNotFoundError("nothing to serve: " + "; ".join(reasons))


def default_source(tracking_uri: str, adapters_dir: str | Path, policies_dir: str | Path, cache_dir: str | Path) -> AdapterSource:
    """What `qeforge serve` serves without --adapter flags: the registry's champions, or, before
    anything is registered, the latest local adapter per category (locations: the resources')."""
    from qeforge.serving.registry_source import RegistrySource

    return FirstAvailableSource(RegistrySource(tracking_uri, cache_dir=cache_dir),
                                LatestLocalSource(adapters_dir, policies_dir=policies_dir))
