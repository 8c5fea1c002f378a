"""The training stage through Dagster: one category's LoRA adapter on the curated home, tracked in MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from assets.training import lora_adapter
from homes import copy_home
from pipelines.definitions import defs
from pipelines.resources import RESOURCES

pytestmark = pytest.mark.slow
CATEGORY = "test-generation"


@pytest.fixture(scope="module")
def trained(curated_home, tmp_path_factory):
    """lora_adapter for one partition, in a copy of the curated home (its base model and datasets are read)."""
    with pytest.MonkeyPatch.context() as mp:
        home = copy_home(curated_home, tmp_path_factory.mktemp("training"), mp)
        run = dg.materialize(list(defs.assets), selection=[lora_adapter.key], partition_key=CATEGORY,
                             resources=defs.resources)
        listed = subprocess.run([sys.executable, "-m", "qeforge.cli", "adapters", "list", "--json"],
                                capture_output=True, text=True, check=True)
        yield run, run.output_for_node("lora_adapter"), json.loads(listed.stdout), home


def test_adapter_beats_its_base_on_validation_loss(trained):
    run, _, _, _ = trained
    assert {c.check_name: c.passed for c in run.get_asset_check_evaluations()} == {"adapter_beats_base_val_loss": True}


def test_adapter_is_saved_under_category_and_dataset_version(trained, curated_home):
    _, adapter, _, home = trained
    assert Path(adapter["adapter_dir"]) == home / "models" / "adapters" / CATEGORY / curated_home.datasets["version"]


def test_training_run_is_logged_to_mlflow(trained):
    _, adapter, _, _ = trained  # its home stays current while this module runs
    run = mlflow.MlflowClient(RESOURCES["mlflow"].resolved_tracking_uri()).get_run(adapter["mlflow_run_id"])
    assert bool(run.data.params["dataset_hash"]) and "eval_loss" in run.data.metrics


def test_adapters_list_shows_the_adapter_and_its_run(trained):
    _, adapter, listed, _ = trained
    assert (listed[CATEGORY]["adapter_dir"], listed[CATEGORY]["mlflow_run_id"]) == (adapter["adapter_dir"],
                                                                                    adapter["mlflow_run_id"])
