"""One source of configuration: resources default from the library's dataclasses, and the CLI reads
the configured resources (pipelines.resources.RESOURCES), not the environment's defaults."""

import json

import pandas as pd

from pipelines.resources import RESOURCES, CurationSettings, DatasetStoreResource, EvaluationSettings, TrainingSettings
from qeforge.cli import main
from qeforge.curation.export import write_version
from qeforge.curation.gate import GateRules
from qeforge.evaluation.routing import Prices


def test_curation_settings_gate_defaults_to_the_library_rules():
    assert CurationSettings().gate() == GateRules()


def test_evaluation_settings_prices_default_to_the_library_prices():
    assert EvaluationSettings().prices() == Prices()


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
