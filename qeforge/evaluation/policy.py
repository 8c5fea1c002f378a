"""The routing policy artifact: per category, the signal, threshold and what to expect from them.

    <evals_dir>/routing_policies/<version>.json   immutable, version = content hash
    <evals_dir>/routing_policies/CURRENT          the version in use
The serving shim and the registry read it; a threshold of "inf" means "always escalate".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SCHEMA_VERSION = 1


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
