"""The cluster shape on one machine: Dagster and MLflow on a real PostgreSQL server, LanceDB and MLflow
artifacts on an S3 API (moto's server), the same Definitions as the embedded default.

Skipped with the reason when PostgreSQL's binaries are absent (`.ci/run` installs them)."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from servers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # dagster, dagster-daemon and qeforge of this environment
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
BUCKET = "qeforge"
CATEGORY = "coverage-analysis"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not PG_BIN, reason="PostgreSQL binaries absent (apt-get install postgresql)")]


@pytest.fixture(scope="module")
def postgres():
    """initdb + pg_ctl in a temp dir on a free loopback port, as the test's user (postgres when root:
    the server refuses to run as root; pytest's own temp dirs are closed to other users). Yields the
    server's base URL."""
    root = Path(tempfile.mkdtemp(prefix="qeforge-pg-"))
    data, port = root / "data", free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    bin_dir = Path(PG_BIN[-1])
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", root / "log", "-w", "start"],
                   check=True, capture_output=True)
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    for name in ("dagster", "mlflow"):
        conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    yield f"postgresql://postgres@127.0.0.1:{port}"
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    """moto in server mode on loopback: a real HTTP S3 API. Yields the endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def test_one_category_end_to_end_on_postgres_and_s3(postgres, s3, tmp_path, monkeypatch, capsys):
    import boto3

    home, dagster_home = tmp_path / "qeforge-home", tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "docs" / "deploy" / "cluster" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        # What docs/deploy/cluster/env.sh sets, pointed at the servers this test started.
        "QEFORGE_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "DAGSTER_PG_URL": f"{postgres}/dagster".replace("postgresql://", "postgresql+psycopg2://"),
        "MLFLOW_TRACKING_URI": f"{postgres}/mlflow", "QEFORGE_MLFLOW_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
        "QEFORGE_LANCEDB_URI": f"s3://{BUCKET}/lancedb", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ENDPOINT": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3, "AWS_ALLOW_HTTP": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = boto3.client("s3", endpoint_url=s3)
    bucket.create_bucket(Bucket=BUCKET)

    from qeforge.main_job import run_main_job

    started = time.time()
    # Serving is checked below, from the artifact store alone. The job's exit code also reflects the
    # quality checks (a tiny adapter on 600 demo rows may not beat its base): this test is about storage.
    run_main_job(demo_rows=600, categories=(CATEGORY,), fleet_loop=False)
    out = capsys.readouterr().out
    assert "curation: ok" in out and f"qeforge-{CATEGORY} v1" in out and "FAILED (run" not in out, out
    print(f"cluster-shaped main job, one category: {time.time() - started:.0f}s")

    # Runs and events in Postgres, not in DAGSTER_HOME.
    runs = dict(_query(f"{postgres}/dagster", "SELECT status, count(*) FROM runs GROUP BY status"))
    # The curation run, the category run (which fails when the champion gate blocks a weak adapter) and
    # the routing run (the policy over the one category evaluated).
    assert sum(runs.values()) == 3 and runs.get("SUCCESS", 0) >= 2, runs
    assert not list(dagster_home.glob("**/*.db"))
    # Training runs, the registered version and its aliases in MLflow's Postgres database.
    from qeforge.registry import client_for, promote

    versions = _query(f"{postgres}/mlflow", "SELECT name, version FROM model_versions")
    assert [name for name, _ in versions] == [f"qeforge-{CATEGORY}"]
    # Whether the tiny adapter clears the champion gate on 600 demo rows is not this test's subject:
    # promote the candidate through the registry (on Postgres) if the gate kept it out.
    promote(client_for(f"{postgres}/mlflow"), CATEGORY, str(versions[0][1]), reason="cluster test")
    aliases = _query(f"{postgres}/mlflow", "SELECT name, alias FROM registered_model_aliases")
    assert (f"qeforge-{CATEGORY}", "champion") in aliases and (f"qeforge-{CATEGORY}", "candidate") in aliases
    assert _query(f"{postgres}/mlflow", "SELECT count(*) FROM runs")[0][0] >= 1
    # Trajectories and the adapter's files in the bucket; nothing of either on local disk.
    keys = [o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    assert any(k.startswith("lancedb/trajectories.lance/") for k in keys)
    assert any(k.startswith("mlflow/") and k.endswith("adapter/adapter_model.safetensors") for k in keys)
    assert not (home / "lancedb").exists() and not (home / "mlflow").exists()

    # The shim serves the champion from the artifact store alone: the trained adapter directory is gone.
    from pipelines.resources import RESOURCES
    from qeforge.serving.registry_source import RegistrySource
    from qeforge.serving.smoke import serve_one_request_per_category

    shutil.rmtree(home / "models" / "adapters")
    shutil.rmtree(home / "serving", ignore_errors=True)
    serving = RESOURCES["serving"]
    registry = RegistrySource(RESOURCES["mlflow"].resolved_tracking_uri(), cache_dir=serving.registry_cache_path())
    settings = serving.settings(registry, models_dir=home / "models", classifier_path=None, db=RESOURCES["lancedb"].connect())
    assert serve_one_request_per_category(settings, categories=(CATEGORY,))
    assert f"serve {CATEGORY}: " in capsys.readouterr().out
    assert list((home / "serving" / "registry_cache").rglob("adapter_model.safetensors"))


# --- The daemon path: schedule tick, sensors, the queued coordinator's training tag limit ----------------

DAEMON_CATEGORIES = ("code-review", "flaky-detection")  # the two categories that train in seconds on tiny


def _demo_rows(path: Path, *, n: int, seed: int) -> Path:
    """Demo trajectories of DAEMON_CATEGORIES only, so the sensor's run chain trains two partitions."""
    import json

    from qeforge.demo import generate_demo_lines

    keep = []
    for line in generate_demo_lines(n, seed=seed, with_embeddings=False):
        try:
            row = json.loads(line)
        except ValueError:  # the demo's deliberately broken lines: the import quarantines them anyway
            continue
        if isinstance(row, dict) and row.get("category") in DAEMON_CATEGORIES:
            keep.append(line)
    path.write_text("\n".join(keep) + "\n")
    return path


def _dagster(env: dict, *args: str) -> None:
    subprocess.run([str(BIN / "dagster"), *args, "-w", "workspace.yaml"], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=300)


def _wait_for(instance, predicate, what: str, timeout_s: float = 1800):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = instance.get_run_records()
        found = predicate(records)
        if found:
            return found
        time.sleep(3)
    raise AssertionError(f"timed out waiting for {what}: "
                         f"{[(r.dagster_run.job_name, r.dagster_run.status.value, dict(r.dagster_run.tags)) for r in records]}")


def _failures(instance, records) -> str:
    """The failed runs' error messages, for an assertion that says what broke."""
    import dagster as dg

    return "\n".join(f"{r.dagster_run.job_name} {r.dagster_run.run_id}: {e.message}" for r in records
                     if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
                     for e in instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE))


def _finished(records, **tags):
    """Run records whose tags include these, once every one of them has finished. Retries (dagster.yaml
    retries a failed run twice; a category run fails when the champion gate keeps its adapter out) carry
    their parent's tags and are left out: these are the runs the sensors and the schedule requested."""
    matching = [r for r in records if all(r.dagster_run.tags.get(k) == v for k, v in tags.items())
                and "dagster/retry_number" not in r.dagster_run.tags]
    return matching if matching and all(r.dagster_run.is_finished for r in matching) else None


def test_daemon_ticks_the_schedule_runs_the_sensors_and_queues_the_second_training_run(postgres, tmp_path, monkeypatch):
    """dagster-daemon on the cluster dagster.yaml: after an import, the new_trajectories sensor requests
    curation for the two categories it affects; after_curation requests one training run per category, and
    the tag limit (qeforge/stage=training: 1) keeps the second in the queue until the first has finished;
    after_category then writes the routing policy. The weekly schedule, on a test cron, then ticks and its
    run is dequeued (not awaited: it is the same curation job)."""
    import dagster as dg
    import psycopg2

    conn = psycopg2.connect(f"{postgres}/postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE daemon")
    conn.close()
    home, dagster_home = tmp_path / "qeforge-home", tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "docs" / "deploy" / "cluster" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "QEFORGE_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
           "DAGSTER_PG_URL": f"{postgres}/daemon".replace("postgresql://", "postgresql+psycopg2://"),
           "QEFORGE_REFRESH_CRON": "* * * * *",  # a tick every minute instead of Monday 03:00
           "QEFORGE_NEW_TRAJECTORIES_THRESHOLD": "10"}
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow and LanceDB stay embedded: this test is about Dagster's daemon
    env.pop("QEFORGE_LANCEDB_URI", None)
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])  # for this process's instance, reading the runs

    def import_rows(seed: int):
        subprocess.run([str(BIN / "qeforge"), "import", "--format", "jsonl",
                        str(_demo_rows(tmp_path / f"rows-{seed}.jsonl", n=400, seed=seed))],
                       cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    import_rows(seed=0)
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"),
                              start_new_session=True)
    try:
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        started = time.time()
        # 1. The sensors on new trajectories: curation for the categories they affect, one training run per
        #    category, and the routing policy after them.
        for sensor in ("after_curation", "after_category", "new_trajectories"):
            _dagster(env, "sensor", "start", sensor)
        (curation,) = _wait_for(instance, lambda rs: _finished(rs, **{"dagster/sensor_name": "new_trajectories"}),
                                "the new_trajectories sensor's curation run")
        assert curation.dagster_run.status == dg.DagsterRunStatus.SUCCESS, _failures(instance, [curation])
        assert curation.dagster_run.tags["qeforge/categories"] == ",".join(DAEMON_CATEGORIES)
        print(f"import -> sensor -> curation run finished: {time.time() - started:.0f}s")
        training = _wait_for(
            instance, lambda rs: (lambda f: f if f and len(f) == 2 else None)(
                _finished(rs, **{"dagster/sensor_name": "after_curation"})),
            "the two training runs after curation")
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in training) == list(DAEMON_CATEGORIES)
        first, second = sorted(training, key=lambda r: r.start_time)
        # Both were requested by the same sensor tick; the second waited in the queue until the first ended.
        assert second.create_timestamp.timestamp() < first.end_time <= second.start_time, (
            second.create_timestamp, first.end_time, second.start_time)
        print(f"training runs {first.end_time - first.start_time:.0f}s and {second.end_time - second.start_time:.0f}s; "
              f"the second queued {second.start_time - second.create_timestamp.timestamp():.0f}s")
        if any(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in training):
            routing = _wait_for(instance, lambda rs: _finished(rs, **{"dagster/sensor_name": "after_category"}),
                                "the routing run after a successful training run")
            assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in routing), _failures(instance, routing)
        print(f"sensor chain end to end: {time.time() - started:.0f}s")

        # 2. The schedule (a test cron): its next minute's tick launches a full refresh through the queue.
        _dagster(env, "schedule", "start", "weekly_refresh")
        (scheduled, *_) = _wait_for(instance, lambda rs: [r for r in rs if r.dagster_run.tags.get("dagster/schedule_name")
                                                          and r.start_time], "the weekly_refresh tick's run to start")
        _dagster(env, "schedule", "stop", "weekly_refresh")
        assert scheduled.dagster_run.job_name == "curation" and scheduled.dagster_run.tags["qeforge/categories"] == "all"
        print(f"schedule tick -> curation run dequeued: {time.time() - started:.0f}s")
    finally:
        # SIGTERM first; a daemon started from a shell that ignores SIGINT also ignores SIGTERM, hence SIGKILL.
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    # Every run, tick and event in PostgreSQL, nothing in DAGSTER_HOME's sqlite.
    assert _query(f"{postgres}/daemon", "SELECT count(*) FROM runs")[0][0] >= 4
    assert _query(f"{postgres}/daemon", "SELECT count(*) FROM job_ticks")[0][0] >= 2
    assert not list(dagster_home.glob("**/*.db"))
