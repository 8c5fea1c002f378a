import json
import math
import sqlite3
import struct

import pytest

from qeforge import store
from qeforge.ingest import import_agentic_qe, import_jsonl
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


def _aqe_db(path):
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE qe_patterns (id TEXT PRIMARY KEY, pattern_type TEXT NOT NULL, qe_domain TEXT NOT NULL,
          domain TEXT NOT NULL, name TEXT NOT NULL, description TEXT, confidence REAL DEFAULT 0.5,
          usage_count INTEGER DEFAULT 0, success_rate REAL DEFAULT 0.0, quality_score REAL DEFAULT 0.0,
          tier TEXT DEFAULT 'short-term', template_json TEXT, context_json TEXT, created_at TEXT,
          successful_uses INTEGER DEFAULT 0, input_tokens INTEGER, output_tokens INTEGER, latency_ms REAL);
        CREATE TABLE qe_pattern_embeddings (pattern_id TEXT PRIMARY KEY, embedding BLOB NOT NULL,
          dimension INTEGER NOT NULL, model TEXT DEFAULT 'all-MiniLM-L6-v2');
        CREATE TABLE captured_experiences (id TEXT PRIMARY KEY, task TEXT NOT NULL, agent TEXT NOT NULL,
          domain TEXT NOT NULL DEFAULT '', success INTEGER NOT NULL DEFAULT 0, quality REAL NOT NULL DEFAULT 0.5,
          duration_ms INTEGER NOT NULL DEFAULT 0, model_tier INTEGER, routing_json TEXT, steps_json TEXT,
          result_json TEXT, error TEXT, started_at TEXT, completed_at TEXT, source TEXT,
          application_count INTEGER DEFAULT 0, reuse_success_count INTEGER DEFAULT 0,
          embedding BLOB, embedding_dimension INTEGER);
        """
    )
    conn.execute(
        "INSERT INTO qe_patterns VALUES ('p1','test-template','test-generation','test-generation','parse dates',"
        "'tests for a date parser',0.9,7,0.9,0.92,'long-term',?,?,'2026-09-01 10:00:00',6,100,200,1500)",
        (json.dumps({"content": "def test_parse(): ..."}), json.dumps({"model": "claude-sonnet-4-6"})),
    )
    conn.execute(
        "INSERT INTO qe_pattern_embeddings VALUES ('p1', ?, 384, 'all-MiniLM-L6-v2')",
        (struct.pack("<384f", *([0.05] * 384)),),
    )
    conn.execute(
        "INSERT INTO captured_experiences (id, task, agent, domain, success, quality, duration_ms, routing_json,"
        " result_json, completed_at, application_count, reuse_success_count) VALUES"
        " ('e1','review this diff','qe-code-reviewer','code-review',1,0.88,900,?,?,'2026-09-02 11:00:00',4,3)",
        (json.dumps({"model": "claude-sonnet-4-6", "confidence": 0.91}), json.dumps({"output": "Line 3: bare except"})),
    )
    # quality 1.5 is out of range: it must reach quarantine, not crash the import.
    conn.execute(
        "INSERT INTO captured_experiences (id, task, agent, domain, success, quality, result_json) VALUES"
        " ('e2','flaky?','qe-flaky-hunter','flaky-detection',1,1.5,'{\"output\": \"Verdict: flaky\"}')"
    )
    conn.commit()
    conn.close()


def test_agentic_qe_memory_db(db, tmp_path):
    path = tmp_path / "memory.db"
    _aqe_db(path)
    summary = import_agentic_qe(db, path)
    assert (summary.read, summary.imported, summary.quarantined["out_of_range:quality"]) == (3, 2, 1)
    rows = store.trajectories(db).to_pandas().set_index("id")
    assert rows.loc["p1", "output"] == "def test_parse(): ..."
    assert rows.loc["p1", "embedding_dim"] == 384 and rows.loc["p1", "usage_count"] == 7
    assert rows.loc["e1", "confidence"] == pytest.approx(0.91) and rows.loc["e1", "category"] == "code-review"
    assert import_agentic_qe(db, path).imported == 0  # idempotent


def test_agentic_qe_rejects_other_sqlite(db, tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValueError, match="not an agentic-qe"):
        import_agentic_qe(db, path)
