import os
from types import SimpleNamespace

import pytest

from homes import use_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def qe_home(tmp_path, monkeypatch):
    """A scratch QEFORGE_HOME under tmp_path."""
    return use_home(monkeypatch, tmp_path / "qeforge-home")


@pytest.fixture(scope="session")
def curated_home(tmp_path_factory):
    """A QEFORGE_HOME holding a 600-row demo bank, curated once by the curation job (with a 30-step tiny
    base). Shared by the pipeline tests, so none writes into it: a stage that writes runs in a copy
    (homes.copy_home)."""
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.resources import RESOURCES
    from qeforge.demo import write_demo_jsonl
    from qeforge.ingest import import_jsonl

    root = tmp_path_factory.mktemp("curated")
    with pytest.MonkeyPatch.context() as mp:
        home = use_home(mp, root / "qeforge-home")
        demo = write_demo_jsonl(root / "demo.jsonl", n=600, seed=0, with_embeddings=False)
        imported = import_jsonl(RESOURCES["lancedb"].connect(), demo)
        result = defs.resolve_job_def("curation").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), raise_on_error=True,
            run_config={"resources": {"training": {"config": {"base_pretrain_steps": 30}}}})
    return SimpleNamespace(home=home, imported=imported, result=result, datasets=result.output_for_node("curated_datasets"))


def good_row(i: int = 0, **overrides) -> dict:
    row = {
        "id": f"t-{i}",
        "task": f"Write pytest tests for function f{i}",
        "output": f"def test_f{i}():\n    assert f{i}() == {i}",
        "category": "test-generation",
        "model": "claude-sonnet-4-6",
        "outcome": "success",
        "quality": 0.9,
        "confidence": 0.85,
        "usage_count": 5,
        "success_count": 4,
        "created_at": "2026-10-01T12:00:00Z",
        "metadata": {"k": i},
    }
    row.update(overrides)
    return row
