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


def _deep(n: int) -> str:
    return '{"id": "deep", "metadata": {"x": ' + "[" * n + "]" * n + "}}"


# Rows that once aborted a whole import (or were stored corrupt); each must now be one quarantined row.
HOSTILE = [
    ("malformed_json", _deep(10_000)),  # RecursionError in the decoder
    ("out_of_range:usage_count", json.dumps(good_row(20, usage_count=2**64))),
    ("out_of_range:input_tokens", json.dumps(good_row(21, input_tokens=10**30))),
    ("out_of_range:latency_ms", json.dumps(good_row(22, latency_ms=10**400))),
    ("out_of_range:quality", json.dumps(good_row(23)).replace('"quality": 0.9', '"quality": ' + "9" * 400)),
    ("out_of_range:created_at", json.dumps(good_row(24, created_at=1e20))),
    ("out_of_range:created_at", json.dumps(good_row(25, created_at=-1e15))),
    ("out_of_range:created_at", json.dumps(good_row(26, created_at="0001-01-01T00:00:00+14:00"))),
    ("invalid_text:task", json.dumps(good_row(27, task="lone \ud800 surrogate"))),
    ("invalid_text:metadata", json.dumps(good_row(28, metadata={"k": "\udfff"}))),
    ("out_of_range:embedding", json.dumps(good_row(29, embedding=[1e39] + [0.1] * 383, embedding_dim=384))),
]


def test_no_hostile_row_aborts_the_import(db, tmp_path):
    valid = [json.dumps(good_row(1)), json.dumps(good_row(2)).replace(", ", ",\r "), json.dumps(good_row(3))]
    lines = [valid[0], *(line for _, line in HOSTILE), valid[1], valid[2]]
    path = tmp_path / "hostile.jsonl"
    # A byte-order mark before the first row, CRLF line ends, and a bare \r (JSON whitespace) inside a row.
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n")
    summary = import_jsonl(db, path)
    assert (summary.read, summary.imported) == (len(lines), 3)
    expected = {}
    for reason, _ in HOSTILE:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(summary.quarantined) == expected
    stored = store.trajectories(db).to_pandas()
    assert sorted(stored["id"]) == ["t-1", "t-2", "t-3"]
    assert store.quarantine(db).count_rows() == len(HOSTILE)
    assert import_jsonl(db, path).already_present == 3  # and the table reads back for the next import


@pytest.mark.slow
def test_two_concurrent_imports_store_each_row_once(tmp_path):
    import subprocess
    import sys

    path = write_lines(tmp_path / "in.jsonl", [json.dumps(good_row(i)) for i in range(3000)])
    uri = tmp_path / "lancedb"
    code = ("import sys; from qeforge import store; from qeforge.ingest import import_jsonl; "
            "print(import_jsonl(store.connect(sys.argv[1]), sys.argv[2]).imported)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(uri), str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    imported = sorted(int(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs)
    assert imported == [0, 3000]  # the second waited for the lock, then found every row present
    assert store.trajectories(store.connect(str(uri))).count_rows() == 3000


def test_orphan_temp_files_are_removed_by_the_next_import(db, tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(good_row(1))])
    import_jsonl(db, path)
    orphan = tmp_path / "lancedb" / "trajectories.lance" / "data" / ".tmp_killed_writer"
    orphan.write_bytes(b"partial")
    import_jsonl(db, write_lines(tmp_path / "more.jsonl", [json.dumps(good_row(2))]))
    assert not orphan.exists()
    assert store.trajectories(db).count_rows() == 2


def test_import_summary_formats_totals_reasons_and_tables():
    from qeforge.ingest import format_summary

    text = format_summary({"source": "s", "read": 3, "imported": 1, "updated": 0, "already_present": 1, "quarantined": 1,
                           "quarantined_by_reason": {"no_answer": 1},
                           "by_table": {"qe_patterns": {"read": 3, "imported": 1, "updated": 0, "quarantined": 1,
                                                        "quarantined_by_reason": {"no_answer": 1}},
                                        "sona_patterns": {"read": 2, "joined": 1}}})
    assert text.splitlines() == [
        "s: read 3, imported 1, updated 0, already present 1, quarantined 1",
        "  quarantined no_answer: 1",
        "  qe_patterns              read     3, imported     1, updated   0, quarantined    1 (no_answer 1)",
        "  sona_patterns            read     2, joined into trajectories     1",
    ]
