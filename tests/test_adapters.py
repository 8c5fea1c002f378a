"""The adapter directory layout (qeforge.training.adapters): what `qeforge adapters list` and the shim read."""

import json
import os

from qeforge.training.adapters import adapter_dir, latest_adapters, recorded_run_id, write_run_record


def finished(root, category, version, mtime, **summary):
    directory = adapter_dir(root, category, version)
    directory.mkdir(parents=True)
    (directory / "training_summary.json").write_text(json.dumps({"base_model": "b", **summary}))
    os.utime(directory / "training_summary.json", (mtime, mtime))
    return directory


def test_the_most_recently_finished_adapter_per_category_wins(tmp_path):
    finished(tmp_path, "code-review", "v1", 1000)
    newer = finished(tmp_path, "code-review", "v2", 2000)
    assert latest_adapters(tmp_path)["code-review"]["adapter_dir"] == str(newer)


def test_an_unfinished_adapter_is_not_listed(tmp_path):
    adapter_dir(tmp_path, "code-review", "v1").mkdir(parents=True)  # no training summary yet
    assert latest_adapters(tmp_path) == {}


def test_the_recorded_mlflow_run_is_listed(tmp_path):
    directory = finished(tmp_path, "code-review", "v1", 1000)
    write_run_record(directory, "run-1", "sqlite:///x.db")
    assert (recorded_run_id(directory), latest_adapters(tmp_path)["code-review"]["mlflow_run_id"]) == ("run-1", "run-1")


def test_an_untracked_adapter_has_no_run(tmp_path):
    assert recorded_run_id(finished(tmp_path, "code-review", "v1", 1000)) is None
