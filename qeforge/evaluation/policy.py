"""The routing policy artifact: per category, the signal, threshold and what to expect from them.

    <evals_dir>/routing_policies/<version>.json   immutable, version = content hash
    <evals_dir>/routing_policies/CURRENT          the version in use
The serving shim and the registry read it; a threshold of "inf" means "always escalate". `jsonable`
is the JSON convention for numbers it, the evaluation summaries and the gateway's responses share.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


def jsonable(value):
    """JSON-safe copy: NaN -> null, +-inf -> "inf"/"-inf" (float("inf") reads it back), numpy -> python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else value)
    return value


def write_policy(categories: dict[str, dict], overall: dict, root: Path) -> tuple[dict, Path]:
    body = {"schema_version": SCHEMA_VERSION, "categories": categories, "overall": overall}
    version = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    policy = {"version": version, **body}
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{version}.json"
    if not path.exists():
        tmp = root / f".{version}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(policy, indent=2, sort_keys=True))
        os.replace(tmp, path)
    pointer = root / f".CURRENT.tmp-{os.getpid()}"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / "CURRENT")
    return policy, path


def load_policy(root: Path, version: str | None = None) -> dict:
    """The current (or a named) policy; a clear error when none has been written yet."""
    root = Path(root)
    if version is None:
        current = root / "CURRENT"
        if not current.exists():
            raise FileNotFoundError(f"no routing policy under {root}: materialize routing_policies first")
        version = current.read_text().strip()
    return json.loads((root / f"{version}.json").read_text())
