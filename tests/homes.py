"""QEFORGE_HOME for tests: a scratch one, or a private copy of the session's curated one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Every embedded-default path under `home`, whatever the environment says."""
    monkeypatch.setenv("QEFORGE_HOME", str(home))
    monkeypatch.delenv("QEFORGE_LANCEDB_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def copy_home(curated_home, where: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the curated home, made current. Recorded paths (the dataset version, the base
    model) still point into the shared one, which is only read."""
    return use_home(monkeypatch, Path(shutil.copytree(curated_home.home, where / "qeforge-home")))
