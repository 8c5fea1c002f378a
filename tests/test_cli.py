"""The `qeforge` command line on a scratch home: what it prints and its exit codes."""

import json
from types import SimpleNamespace

import pytest

from qeforge.cli import main


@pytest.fixture
def qeforge(capsys):
    """Runs the CLI in-process: (returncode, stdout, stderr)."""
    def run(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def test_info_reports_locations_under_qeforge_home(qe_home, qeforge):
    info = json.loads(qeforge("info", "--json").stdout)
    assert (info["lancedb_uri"], info["mlflow_tracking_uri"], info["datasets_dir"], info["evals_dir"]) == (
        str(qe_home / "lancedb"), f"sqlite:///{qe_home / 'mlflow' / 'mlflow.db'}", str(qe_home / "datasets"),
        str(qe_home / "evals"))


@pytest.fixture
def mixed_import(qe_home, tmp_path, qeforge):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "task": "t", "output": "o", "model": "m", "outcome": "success", "quality": 0.9, '
                    '"confidence": 0.9}\n{oops\n')
    return qeforge("import", "--format", "jsonl", str(path))


def test_import_prints_its_counts(mixed_import):
    assert "read 2, imported 1, updated 0, already present 0, quarantined 1" in mixed_import.stdout


def test_import_prints_quarantine_reasons(mixed_import):
    assert "quarantined malformed_json: 1" in mixed_import.stdout


def test_import_explains_the_curation_gate(mixed_import):
    assert ("curation gate: 0 of 1 trajectories passed the gate; failing (a row can fail several): 1 usage_below_min"
            in mixed_import.stdout)


def test_import_of_a_missing_file_exits_2(qe_home, tmp_path, qeforge):
    missing = qeforge("import", "--format", "jsonl", str(tmp_path / "nope"))
    assert (missing.returncode, "does not exist" in missing.stderr) == (2, True)


def test_datasets_show_without_a_version_exits_1(qe_home, qeforge):
    shown = qeforge("datasets", "show")
    assert (shown.returncode, "no dataset version yet" in shown.stderr) == (1, True)
