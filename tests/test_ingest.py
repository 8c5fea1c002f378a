import json
import math

import pytest

from qeforge import store
from qeforge.ingest import import_jsonl
from qeforge.schema import InvalidRow, validate_row
from tests.conftest import good_row


@pytest.fixture
def db(tmp_path):
    return store.connect(str(tmp_path / "lancedb"))


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


BROKEN = {
    "malformed_json": '{"id": "x1", "task": "cut off',
    "not_an_object": json.dumps([1, 2, 3]),
    "missing:task": json.dumps({k: v for k, v in good_row(1).items() if k != "task"}),
    "empty:output": json.dumps(good_row(2, output="   ")),
    "wrong_type:quality": json.dumps(good_row(3, quality="high")),
    "out_of_range:quality": json.dumps(good_row(4, quality=1.7)),
    "out_of_range:confidence": json.dumps(good_row(5, confidence=-0.2)),
    "unknown_value:outcome": json.dumps(good_row(6, outcome="done")),
    "unknown_value:category": json.dumps(good_row(7, category="perf-testing")),
    "non_finite:quality": json.dumps(good_row(8, quality=math.nan)),
    "non_finite:embedding": json.dumps(good_row(9, embedding=[0.1] * 383 + [math.inf], embedding_dim=384)),
    "embedding_dim_mismatch": json.dumps(good_row(10, embedding=[0.1] * 383, embedding_dim=384)),
    "wrong_type:usage_count": json.dumps(good_row(11, usage_count=True)),
}


def test_every_kind_of_bad_row_is_quarantined_with_its_reason(db, tmp_path):
    lines = [json.dumps(good_row(100)), *BROKEN.values(), json.dumps(good_row(101))]
    summary = import_jsonl(db, write_lines(tmp_path / "in.jsonl", lines))
    assert summary.read == len(lines)
    assert summary.imported == 2
    assert dict(summary.quarantined) == {reason: 1 for reason in BROKEN}
    q = store.quarantine(db).to_pandas()
    assert sorted(q["reason"]) == sorted(BROKEN)
    # The raw text is kept verbatim, so nothing is lost.
    assert set(q["raw"]) == set(BROKEN.values())


def test_reimport_adds_nothing(db, tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(good_row(i)) for i in range(5)] + [BROKEN["malformed_json"]])
    first = import_jsonl(db, path)
    second = import_jsonl(db, path)
    assert (first.imported, first.already_present) == (5, 0)
    assert (second.imported, second.already_present) == (0, 5)
    assert store.trajectories(db).count_rows() == 5
    assert store.quarantine(db).count_rows() == 1


def test_duplicate_ids_in_one_file_and_across_imports(db, tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [json.dumps(good_row(1)), json.dumps(good_row(1, output="other"))])
    summary = import_jsonl(db, a)
    assert summary.imported == 1 and summary.quarantined["conflicting_id"] == 1
    b = write_lines(tmp_path / "b.jsonl", [json.dumps(good_row(1, quality=0.1))])
    assert import_jsonl(db, b).quarantined["conflicting_id"] == 1
    stored = store.trajectories(db).to_pandas()
    assert stored.loc[0, "quality"] == 0.9  # the first version stands


def test_undecodable_bytes_are_quarantined_not_fatal(db, tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(good_row(1)).encode() + b"\n\xff\xfe{broken\n")
    summary = import_jsonl(db, path)
    assert summary.imported == 1 and summary.quarantined["malformed_json"] == 1


def test_validate_row_normalizes_optional_fields():
    row = validate_row(good_row(1, embedding=[0.0] * 768, embedding_model="nomic-embed-text"))
    assert row["embedding_dim"] == 768 and row["reward"] is None and row["category"] == "test-generation"
    with pytest.raises(InvalidRow) as err:
        validate_row(good_row(1, success_count=9, usage_count=3))
    assert err.value.reason == "out_of_range:success_count"




def test_a_newer_version_updates_and_keeps_the_old_one_in_history(db, tmp_path):
    v1 = good_row(1, updated_at="2026-10-01T12:00:00Z", usage_count=5)
    v2 = good_row(1, updated_at="2026-10-02T12:00:00Z", usage_count=6)
    import_jsonl(db, write_lines(tmp_path / "v1.jsonl", [json.dumps(v1)]))
    summary = import_jsonl(db, write_lines(tmp_path / "v2.jsonl", [json.dumps(v2)]))
    assert (summary.updated, summary.imported, summary.quarantined_total) == (1, 0, 0)
    assert store.trajectories(db).to_pandas()["usage_count"].tolist() == [6]
    assert store.history(db).to_pandas()["usage_count"].tolist() == [5]
    # An older version arriving late is a conflict, and the newer row stands.
    older = import_jsonl(db, write_lines(tmp_path / "v0.jsonl", [json.dumps(good_row(1, updated_at="2026-09-01T00:00:00Z"))]))
    assert older.quarantined["conflicting_id"] == 1
    assert store.trajectories(db).to_pandas()["usage_count"].tolist() == [6]


def test_two_versions_in_one_file_keep_the_newer_and_lose_nothing(db, tmp_path):
    lines = [json.dumps(good_row(1, usage_count=5)), json.dumps(good_row(1, usage_count=8, success_count=7))]
    summary = import_jsonl(db, write_lines(tmp_path / "in.jsonl", lines))
    assert (summary.imported, summary.updated) == (1, 0)
    assert store.trajectories(db).to_pandas()["usage_count"].tolist() == [8]  # no timestamp: more use is newer
    assert store.history(db).to_pandas()["usage_count"].tolist() == [5]


def test_steps_are_validated_and_stored(db, tmp_path):
    steps = [{"action": "run", "outcome": "failure", "error": "boom", "duration_ms": 5},
             {"action": "fix", "outcome": "success", "quality": 1.0, "tokens": 12, "result": {"patch": "x"}}]
    bad = [{"action": "run"}]
    lines = [json.dumps(good_row(1, steps=steps)), json.dumps(good_row(2, steps=bad))]
    summary = import_jsonl(db, write_lines(tmp_path / "in.jsonl", lines))
    assert summary.imported == 1 and summary.quarantined["missing:outcome"] == 1
    stored = store.trajectories(db).to_pandas().loc[0, "steps"]
    assert [s["action"] for s in stored] == ["run", "fix"]
    assert stored[1]["result"] == '{"patch": "x"}' and stored[1]["tokens"] == 12


def test_a_table_from_an_older_schema_gains_the_new_columns(tmp_path):
    import lancedb
    import pyarrow as pa

    from qeforge.schema import TRAJECTORY_SCHEMA

    db = lancedb.connect(str(tmp_path / "lancedb"))
    old = pa.schema([f for f in TRAJECTORY_SCHEMA if f.name not in ("steps", "updated_at", "embedding_text")])
    db.create_table(store.TRAJECTORIES, schema=old)
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(good_row(1, steps=[{"action": "a", "outcome": "success"}]))])
    assert import_jsonl(db, path).imported == 1
    stored = store.trajectories(db).to_arrow()
    assert set(TRAJECTORY_SCHEMA.names) <= set(stored.schema.names)
    assert stored["steps"].to_pylist()[0][0]["action"] == "a"
