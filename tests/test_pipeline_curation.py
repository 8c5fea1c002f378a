"""The curation job end to end on a 600-row demo bank (the session's curated_home), through Dagster."""

import json
import subprocess
import sys

import dagster as dg
import pytest
from datasets import load_from_disk

from homes import copy_home, use_home
from pipelines.definitions import defs
from qeforge.categories import CATEGORIES

pytestmark = pytest.mark.slow


def test_every_curation_check_passes(curated_home):
    checks = {c.check_name: c.passed for c in curated_home.result.get_asset_check_evaluations()}
    assert checks == {"schema_valid": True, "quarantine_rate_below_bound": True, "rows_pass_gate": True,
                      "no_row_dropped_below_cap": True, "splits_non_empty": True, "no_cross_split_leakage": True}


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_dataset_has_three_splits_of_chat_rows(curated_home, category):
    out = curated_home.datasets
    dd = load_from_disk(f"{out['path']}/{category}")
    roles = [m["role"] for m in dd["train"][0]["messages"]]
    assert (set(dd), roles, dd["train"].num_rows) == (
        {"train", "validation", "test"}, ["system", "user", "assistant"], out["splits"][category]["train"])


def test_planted_duplicates_are_removed(curated_home):
    dedup = curated_home.result.asset_materializations_for_node("deduplicated")[0].metadata
    assert dedup["removed_exact"].value + dedup["removed_semantic"].value > 0


def test_the_classifier_is_an_asset_saved_with_the_version(curated_home):
    classifier = curated_home.result.output_for_node("category_classifier")
    saved = json.loads((curated_home.home / "datasets" / curated_home.datasets["version"] / "classifier.json").read_text())
    assert saved == classifier["classifier"]


def test_same_input_gives_the_same_version(curated_home, tmp_path, monkeypatch):
    copy_home(curated_home, tmp_path, monkeypatch)
    again = defs.resolve_job_def("curation").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=True, run_config={"resources": {"training": {"config": {"base_pretrain_steps": 30}}}})
    assert again.output_for_node("curated_datasets")["version"] == curated_home.datasets["version"]


@pytest.fixture(scope="module")
def shown(curated_home):
    """`qeforge datasets show --json` on the curated home."""
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, curated_home.home)
        out = subprocess.run([sys.executable, "-m", "qeforge.cli", "datasets", "show", "--json"], capture_output=True,
                             text=True, check=True)
    return json.loads(out.stdout)


def test_datasets_show_prints_the_current_version(shown, curated_home):
    assert (shown["version"], shown["splits"]) == (curated_home.datasets["version"], curated_home.datasets["splits"])


def test_manifest_counts_the_quarantine_and_dedup(shown, curated_home):
    corpus = shown["report"]["corpus"]
    assert (corpus["quarantined"], corpus["dedup_removed"] > 0) == (curated_home.imported.quarantined_total, True)


@pytest.mark.parametrize("category", CATEGORIES)
def test_without_a_cap_every_good_row_reaches_its_dataset(shown, curated_home, category):
    counts = shown["report"][category]
    assert (counts["used"], counts["dropped_by_cap"]) == (sum(curated_home.datasets["splits"][category].values()), 0)


def test_empty_bank_fails_with_a_clear_message(qe_home):
    result = defs.resolve_job_def("curation").execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                                 raise_on_error=False)
    assert "qeforge demo-data" in result.failure_data_for_node("raw_trajectories").error.message
