"""The cluster shape on one machine: Dagster and MLflow on a real PostgreSQL server, LanceDB and MLflow
artifacts on an S3 API (moto's server), the same Definitions as the embedded default.

Skipped with the reason when PostgreSQL's binaries are absent (`.ci/run` installs them)."""

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from servers import free_port

REPO = Path(__file__).resolve().parents[1]
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
    run_main_job(demo_rows=600, categories=(CATEGORY,), serve_check=False)
    out = capsys.readouterr().out
    assert "curation: ok" in out and f"qeforge-{CATEGORY} v1" in out and "FAILED (run" not in out, out
    print(f"cluster-shaped main job, one category: {time.time() - started:.0f}s")

    # Runs and events in Postgres, not in DAGSTER_HOME.
    runs = dict(_query(f"{postgres}/dagster", "SELECT status, count(*) FROM runs GROUP BY status"))
    # The curation run and the category run (which fails when the champion gate blocks a weak adapter).
    assert sum(runs.values()) == 2 and runs.get("SUCCESS", 0) >= 1, runs
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
    from qeforge.serving.registry_source import RegistrySource
    from qeforge.serving.smoke import serve_one_request_per_category

    shutil.rmtree(home / "models" / "adapters")
    shutil.rmtree(home / "serving", ignore_errors=True)
    assert serve_one_request_per_category(RegistrySource(), categories=(CATEGORY,))
    assert f"serve {CATEGORY}: " in capsys.readouterr().out
    assert list((home / "serving" / "registry_cache").rglob("adapter_model.safetensors"))
