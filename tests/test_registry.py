"""MLflow registry: candidates, the blocking champion gate, promote/rollback, a remote tracking server."""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from servers import free_port, spawn, stop, wait_until
from tiny_models import build_base, random_adapter

from qeforge.registry import (CANDIDATE, CHAMPION, client_for, file_sha256, promote, promotion_gate,
                              register_candidate, rollback, version_by_alias)

CATEGORY = "code-review"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    base = build_base(root)
    return {"base": str(base), "good": random_adapter(base, root / "good", 1), "other": random_adapter(base, root / "other", 2)}


def _run_with_adapter(client, adapter_dir, experiment="qeforge-code-review"):
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(adapter_dir), "adapter")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _tags(tiny, adapter="good", ratio=0.6, low=0.5, high=0.7, gain=0.1):
    path = tiny[adapter]
    policy = {"signal": "mean_logprob", "threshold": -0.5}
    return {"base_model": tiny["base"], "adapter_dir": str(path),
            "adapter_sha256": file_sha256(path / "adapter_model.safetensors"),
            "quality_ratio": ratio, "quality_ratio_ci_low": low, "quality_ratio_ci_high": high,
            "adapter_gain_over_base": gain, "routing_policy": json.dumps(policy)}


def test_gate_is_ci_aware_and_blocks_a_worse_candidate():
    champion = {"quality_ratio": 0.80, "version": "3"}
    noise = {"quality_ratio": 0.78, "quality_ratio_ci_high": 0.90, "adapter_gain_over_base": 0.1}
    worse = {"quality_ratio": 0.50, "quality_ratio_ci_high": 0.62, "adapter_gain_over_base": 0.1}
    assert promotion_gate(noise, champion, smoke_ok=True).passed
    result = promotion_gate(worse, champion, smoke_ok=True)
    assert not result.passed and "below champion v3" in result.reasons[0]
    assert not promotion_gate({**noise, "adapter_gain_over_base": 0.0}, champion, smoke_ok=True).passed
    assert not promotion_gate(noise, None, smoke_ok=False).passed
    assert promotion_gate(worse, None, smoke_ok=True).passed  # the first champion only has to beat its base


@pytest.mark.slow
def test_register_promote_rollback_with_who_when_why(tmp_path, tiny):
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    v1 = register_candidate(client, CATEGORY, run_id=_run_with_adapter(client, tiny["good"]), tags=_tags(tiny), card="# v1")
    assert str(version_by_alias(client, CATEGORY, CANDIDATE).version) == v1
    assert version_by_alias(client, CATEGORY, CHAMPION) is None
    assert client.get_model_version("qeforge-code-review", v1).description == "# v1"
    assert promote(client, CATEGORY, v1, actor="ana", reason="first") is None
    v2 = register_candidate(client, CATEGORY, run_id=_run_with_adapter(client, tiny["other"]), tags=_tags(tiny, "other"), card="# v2")
    assert str(version_by_alias(client, CATEGORY, CHAMPION).version) == v1  # registering never moves champion
    assert promote(client, CATEGORY, v2, actor="ana", reason="better on flaky suites") == v1
    champion = version_by_alias(client, CATEGORY, CHAMPION)
    assert str(champion.version) == v2 and champion.tags["previous_champion"] == v1
    assert champion.tags["promoted_by"] == "ana" and champion.tags["promoted_reason"] == "better on flaky suites"
    assert rollback(client, CATEGORY, actor="bo", reason="regression in prod") == v1
    assert str(version_by_alias(client, CATEGORY, CHAMPION).version) == v1
    assert client.get_model_version("qeforge-code-review", v2).tags["rolled_back_by"] == "bo"
    with pytest.raises(LookupError, match="nothing to roll back"):
        rollback(client, CATEGORY, reason="again")


def _write_input(io_root, asset, partition, value):
    path = io_root / asset / f"{partition}.json" if partition else (io_root / f"{asset}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


@pytest.mark.slow
def test_blocking_gate_keeps_a_worse_candidate_out_of_champion(tmp_path, tiny, qe_home):
    """registered_adapter -> champion_gate (blocking) -> champion_adapter, through Dagster, twice."""
    from assets import curation, evaluation, registry, training
    from pipelines.definitions import defs
    from pipelines.io import ParquetIOManager
    from pipelines.resources import MLflowResource

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = client_for(uri)
    io_root = tmp_path / "assets"

    def cycle(adapter, ratio, high, version_name, selection=("registered_adapter", "champion_adapter")):
        score = lambda v: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}  # noqa: E731
        summary = {"quality_ratio": {"value": ratio, "ci_low": ratio - 0.1, "ci_high": high},
                   "adapter_score": score(ratio), "base_score": score(0.1), "claude_score": score(1.0),
                   "adapter_gain_over_base": 0.2, "meets_target": False, "n_paired": 5, "n_eval": 5,
                   "target_ratio": 0.9, "eval_split": "test", "score_range": [0, 1], "detail": {}}
        # A copy per cycle: the module's adapter dirs stay as built.
        adapter_dir = Path(shutil.copytree(tiny[adapter], tmp_path / f"{adapter}-{version_name}"))
        (adapter_dir / "training_summary.json").write_text(json.dumps(
            {"base_model": tiny["base"], "dataset_hash": "d" * 64, "adapter_size_bytes": 1000, "recipe": {"lora_r": 4}}))
        routing = {"signal_auroc": {"mean_logprob": 0.7}, "cpt": {"50": 0.2, "80": 0.5, "95": 0.9}, "apgr": 0.6,
                   "confirmed": {"local_share": 0.4, "quality_ratio": 0.95, "quality_ratio_low": 0.9,
                                 "quality_ratio_high": 1.0, "savings_per_1k": 1.2}}
        policy = {"signal": "mean_logprob", "threshold": -0.5, "eval_spec": "code-review@v1 (x)"}
        _write_input(io_root, "lora_adapter", CATEGORY, {"adapter_dir": str(adapter_dir),
                                                         "mlflow_run_id": _run_with_adapter(client, adapter_dir)})
        _write_input(io_root, "adapter_evaluation", CATEGORY, {"summary": summary})
        _write_input(io_root, "routing_policy", CATEGORY, {"routing": routing, "policy": policy})
        _write_input(io_root, "curated_datasets", None, {"version": version_name, "path": str(tmp_path / "no-datasets")})
        _write_input(io_root, "base_model", None, {"name_or_path": tiny["base"], "profile": "tiny"})
        return dg.materialize(
            # Upstream assets are read from the IO manager's files written above, not run.
            dg.load_assets_from_modules([curation, training, evaluation, registry]),
            partition_key=CATEGORY, raise_on_error=False,
            resources={**defs.resources, "io_manager": ParquetIOManager(base_dir=str(io_root)),
                       "mlflow": MLflowResource(tracking_uri=uri)},
            selection=dg.AssetSelection.assets(*selection),
        )

    first = cycle("good", 0.60, 0.70, "ds1")
    assert str(version_by_alias(client, CATEGORY, CHAMPION).version) == "1"
    assert [c.passed for c in first.get_asset_check_evaluations()] == [True]

    second = cycle("other", 0.30, 0.40, "ds2")  # credibly worse than champion's 0.60
    (gate,) = second.get_asset_check_evaluations()
    assert not gate.passed and "below champion v1" in gate.description
    assert str(version_by_alias(client, CATEGORY, CANDIDATE).version) == "2"
    assert str(version_by_alias(client, CATEGORY, CHAMPION).version) == "1"  # never moved
    assert "quality_ratio" in client.get_model_version("qeforge-code-review", "2").description.lower()

    # An evaluation that fails (here: its dataset is gone) stops the run before anything is registered.
    third = cycle("good", 0.9, 0.95, "ds3", selection=("adapter_evaluation", "registered_adapter", "champion_adapter"))
    assert not third.success
    assert third.get_asset_materialization_events() == []
    assert str(version_by_alias(client, CATEGORY, CHAMPION).version) == "1"
    assert len(client.search_model_versions("name='qeforge-code-review'")) == 2


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback: SQL (sqlite) backend, artifacts proxied by the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                  "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts", "--workers", "1"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, timeout_s=120,
                   process=proc, what="mlflow server", poll_s=1)
        yield url
    finally:
        stop(proc)


@pytest.mark.slow
def test_remote_tracking_server_registry_and_serving_source(mlflow_server, tiny, tmp_path):
    """Nothing assumes a local path: adapters come back from the server when the recorded dir is gone."""
    from qeforge.serving.registry_source import RegistrySource

    client = client_for(mlflow_server)
    run_id = _run_with_adapter(client, tiny["good"])
    tags = {**_tags(tiny), "adapter_dir": str(tmp_path / "moved-away")}
    version = register_candidate(client, CATEGORY, run_id=run_id, tags=tags, card="# remote")
    promote(client, CATEGORY, version, actor="ci", reason="remote test")
    snapshot = RegistrySource(mlflow_server, cache_dir=tmp_path / "cache").load()
    served = snapshot.adapters[CATEGORY]
    assert served.version == version and served.policy["threshold"] == -0.5
    assert str(served.path).startswith(str(tmp_path / "cache"))
    assert file_sha256(served.path / "adapter_model.safetensors") == tags["adapter_sha256"]
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_lineage_tags_record_where_a_version_came_from(tmp_path):
    from qeforge.registry import lineage_tags

    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    score = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    summary = {"quality_ratio": score, "adapter_score": score, "base_score": score, "claude_score": score,
               "adapter_gain_over_base": 0.1, "meets_target": False}
    tags = lineage_tags("code-review", training={"base_model": "b", "dataset_hash": "h", "adapter_size_bytes": 7},
                        summary=summary, policy={"eval_spec": "s", "signal": "mean_logprob", "threshold": -1.0},
                        dataset_version="v1", training_run_id="r1", adapter_dir=tmp_path, git_commit=None)
    assert {k: tags[k] for k in ("base_model", "dataset_version", "training_run_id", "git_commit", "adapter_sha256")} == {
        "base_model": "b", "dataset_version": "v1", "training_run_id": "r1", "git_commit": "unknown",
        "adapter_sha256": file_sha256(tmp_path / "adapter_model.safetensors")}
