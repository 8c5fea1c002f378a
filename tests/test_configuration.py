"""One source of configuration: resources default from the library's dataclasses, the CLI reads
the configured resources (pipelines.resources.RESOURCES), not the environment's defaults, and the
library below the entry points reads no environment."""

import ast
import json
from pathlib import Path

import pandas as pd

from pipelines.resources import (RESOURCES, AutomationSettings, CurationSettings, DatasetStoreResource, EvaluationSettings,
                                 TrainingSettings)
from qeforge.cli import main
from qeforge.curation.export import write_version
from qeforge.curation.gate import GateRules
from qeforge.evaluation.routing import Prices

LIBRARY = Path(__file__).resolve().parents[1] / "qeforge"
# The entry points and locations.py resolve configuration; sandbox.py hands the sandboxed process a PATH
# to find its interpreter, which is not configuration. (The demo generator's os.environ is inside the
# test source it writes out as text, which ast sees as a string.)
MAY_READ_ENVIRONMENT = {"cli.py", "main_job.py", "locations.py", "evaluation/sandbox.py"}


def _configuration_reads(tree: ast.AST) -> list[str]:
    """os.environ / os.getenv uses (however imported) and calls of default_locations(), by line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            found.append(f"{node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{node.lineno}: from os import {a.name}" for a in node.names if a.name in ("environ", "getenv")]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "default_locations":
            found.append(f"{node.lineno}: default_locations()")
    return found


def test_the_library_below_the_entry_points_reads_no_environment():
    offenders = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        name = path.relative_to(LIBRARY).as_posix()
        if name not in MAY_READ_ENVIRONMENT and (reads := _configuration_reads(ast.parse(path.read_text()))):
            offenders[name] = reads
    assert offenders == {}, "pass these as arguments, resolved in pipelines/resources.py or an entry point"


def test_the_check_finds_each_way_of_reading_the_environment():
    source = "import os\nfrom os import getenv\na = os.environ['X']\nb = os.getenv('Y')\nc = default_locations()\n"
    assert len(_configuration_reads(ast.parse(source))) == 4
    assert _configuration_reads(ast.parse("text = 'os.environ[\"API_TOKEN\"]'")) == []


def test_automation_settings_take_their_variables_when_empty(monkeypatch):
    monkeypatch.setenv("QEFORGE_REFRESH_CRON", "* * * * *")
    monkeypatch.setenv("QEFORGE_NEW_TRAJECTORIES_THRESHOLD", "10")
    assert AutomationSettings().resolved_refresh_cron() == "* * * * *"
    assert AutomationSettings().resolved_new_trajectories_threshold() == 10
    assert AutomationSettings(new_trajectories_threshold=3).resolved_new_trajectories_threshold() == 3


def test_curation_settings_gate_defaults_to_the_library_rules():
    assert CurationSettings().gate() == GateRules()


def test_evaluation_settings_prices_default_to_the_library_prices():
    assert EvaluationSettings().prices() == Prices()


def test_evaluation_generates_on_the_weights_the_gateway_serves():
    """A routing threshold is tuned on evaluation's signal: with the gateway on int8 weights, evaluation's
    generation is too (adapter_evaluation passes ServingSettings.generation_weights() down)."""
    from pipelines.resources import ServingSettings
    from qeforge.serving.backends import BACKENDS, WEIGHTS

    assert {b: ServingSettings(backend=b).generation_weights() for b in BACKENDS} == {
        "torch": "model", "torch-int8": "int8", "onnx": "model"}
    assert set(WEIGHTS) == {"model", "int8"}


def test_datasets_show_reads_the_configured_dataset_store(qe_home, tmp_path, monkeypatch, capsys):
    root = tmp_path / "elsewhere"
    records = pd.DataFrame({"id": ["a"], "category": ["code-review"], "messages": [[{"role": "user", "content": "x"}]],
                            "quality": [0.9], "model": ["m"], "group": ["a"], "metadata": ["{}"], "split": ["train"]})
    version, _, _ = write_version(records, root, report={})
    monkeypatch.setitem(RESOURCES, "dataset_store", DatasetStoreResource(root=str(root)))
    assert main(["datasets", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == version


def test_adapters_list_reads_the_configured_models_dir(qe_home, tmp_path, monkeypatch, capsys):
    adapter = tmp_path / "models" / "adapters" / "code-review" / "v1"
    adapter.mkdir(parents=True)
    (adapter / "training_summary.json").write_text(json.dumps({"base_model": "b", "val_loss": 1.0, "base_val_loss": 2.0}))
    monkeypatch.setitem(RESOURCES, "training", TrainingSettings(models_dir=str(tmp_path / "models")))
    assert main(["adapters", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["code-review"]["adapter_dir"] == str(adapter)


def test_info_shows_the_configured_evals_dir(qe_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(RESOURCES, "evaluation", EvaluationSettings(evals_dir=str(tmp_path / "evals")))
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evals_dir"] == str(tmp_path / "evals")


def test_the_cli_offers_every_profile_and_each_has_a_base():
    from qeforge.cli import build_parser
    from qeforge.training.base_sources import PROFILE_BASES
    from qeforge.training.recipes import PROFILES

    assert [build_parser().parse_args(["run", "--profile", p]).profile for p in PROFILES] == list(PROFILES)
    assert set(PROFILE_BASES) | {"tiny"} == set(PROFILES)  # tiny builds its own base
