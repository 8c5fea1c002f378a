"""Where embedded-default state lives: everything under one root, QEFORGE_HOME.

A relative path is taken relative to the project root, never the current
directory, so `dagster dev`, the CLI and tests started anywhere agree.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


def qeforge_home() -> Path:
    return project_path(os.environ.get("QEFORGE_HOME", ".qeforge"))


def put_environment_scripts_on_path() -> None:
    """This Python environment's scripts directory (a venv's bin/) first on PATH, so tools installed
    into it as packages are found by programs that look them up on PATH: torch's C++ extension builder
    runs `ninja` that way, and `.venv/bin/python` run without activating the venv does not put it there."""
    import sysconfig

    scripts = sysconfig.get_path("scripts")
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def is_uri(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class Locations:
    home: str
    lancedb_uri: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    datasets_dir: str
    models_dir: str
    adapters_dir: str  # <adapters_dir>/<category>/<dataset version>/, see qeforge.training.adapters
    evals_dir: str  # per-category evaluations and routing_policies/
    dagster_home: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def default_locations() -> Locations:
    """The embedded defaults, each overridable by its own variable."""
    home = qeforge_home()
    mlflow_dir = home / "mlflow"
    return Locations(
        home=str(home),
        lancedb_uri=os.environ.get("QEFORGE_LANCEDB_URI") or str(home / "lancedb"),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifact_root=os.environ.get("QEFORGE_MLFLOW_ARTIFACT_ROOT") or str(mlflow_dir / "artifacts"),
        datasets_dir=str(home / "datasets"),
        models_dir=str(home / "models"),
        adapters_dir=str(home / "models" / "adapters"),
        evals_dir=str(home / "evals"),
        dagster_home=str(project_path(os.environ.get("DAGSTER_HOME", "dagster_home"))),
    )
