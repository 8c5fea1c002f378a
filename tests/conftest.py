import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def qe_home(tmp_path, monkeypatch):
    """A scratch QEFORGE_HOME: every embedded-default path moves under tmp_path."""
    home = tmp_path / "qeforge-home"
    monkeypatch.setenv("QEFORGE_HOME", str(home))
    monkeypatch.delenv("QEFORGE_LANCEDB_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


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
