"""Import trajectories into LanceDB: every row is either stored or quarantined with a reason.

Idempotent by id: a row whose id is already stored with the same content is
skipped; the same id with different content is quarantined as `conflicting_id`.
Quarantined raw rows are keyed by the hash of their text, so re-importing a file
adds nothing anywhere.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.schema import (
    QUARANTINE_SCHEMA,
    TRAJECTORY_SCHEMA,
    InvalidRow,
    content_hash,
    raw_key,
    validate_row,
)


@dataclass
class ImportSummary:
    source: str
    read: int = 0
    imported: int = 0
    already_present: int = 0
    quarantined: Counter = field(default_factory=Counter)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "read": self.read,
            "imported": self.imported,
            "already_present": self.already_present,
            "quarantined": self.quarantined_total,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
        }


def _stored_hashes(db) -> dict[str, str]:
    table = store.trajectories(db).to_arrow().select(["id", "content_hash"])
    return dict(zip(table["id"].to_pylist(), table["content_hash"].to_pylist()))


def import_records(db, records: list[tuple[str, object]], source: str) -> ImportSummary:
    """Import (raw_text, parsed_or_exception) pairs. `parsed` is the decoded row or the decode error."""
    summary = ImportSummary(source=source)
    stored = _stored_hashes(db)
    known_quarantine = set(store.quarantine(db).to_arrow()["key"].to_pylist())
    now = datetime.now(timezone.utc)
    good: list[dict] = []
    bad: list[dict] = []

    def reject(raw: str, reason: str, detail: str, row_id: str | None = None):
        summary.quarantined[reason] += 1
        key = raw_key(raw)
        if key in known_quarantine:
            return
        known_quarantine.add(key)
        # Undecodable bytes are kept as \xNN escapes: Arrow strings must be valid UTF-8.
        text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        bad.append(
            dict(key=key, row_id=row_id, reason=reason, detail=detail, raw=text, source=source, quarantined_at=now)
        )

    for raw, parsed in records:
        summary.read += 1
        if isinstance(parsed, Exception):
            reject(raw, "malformed_json", str(parsed))
            continue
        try:
            row = validate_row(parsed)
        except InvalidRow as err:
            row_id = parsed.get("id") if isinstance(parsed, dict) and isinstance(parsed.get("id"), str) else None
            reject(raw, err.reason, err.detail, row_id)
            continue
        digest = content_hash(row)
        previous = stored.get(row["id"])
        if previous == digest:
            summary.already_present += 1
            continue
        if previous is not None:
            reject(raw, "conflicting_id", f"id {row['id']} already stored with different content", row["id"])
            continue
        stored[row["id"]] = digest
        good.append({**row, "source": source, "content_hash": digest})
        summary.imported += 1

    if good:
        store.trajectories(db).add(pa.Table.from_pylist(good, schema=TRAJECTORY_SCHEMA))
    if bad:
        store.quarantine(db).add(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
    return summary


def read_jsonl(path: Path) -> list[tuple[str, object]]:
    records = []
    # errors="surrogateescape": undecodable bytes reach quarantine instead of aborting the file.
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            raw = line.rstrip("\n")
            if not raw.strip():
                continue
            try:
                records.append((raw, json.loads(raw)))
            except (json.JSONDecodeError, UnicodeError) as err:
                records.append((raw, err))
    return records


def import_jsonl(db, path: str | Path) -> ImportSummary:
    path = Path(path)
    return import_records(db, read_jsonl(path), source=f"jsonl:{path.name}")


# --- agentic-qe memory.db -------------------------------------------------------------
# agentic-qe keeps its ReasoningBank in one SQLite file (.agentic-qe/memory.db):
# `qe_patterns` (+ vectors in `qe_pattern_embeddings`) and `captured_experiences`.
# Both map onto the trajectory schema; the mapping is documented in the README.

AQE_DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # agentic-qe's column default
AQE_DEFAULT_CONFIDENCE = 0.5  # agentic-qe's column default when nothing was recorded


def _blob_to_vector(blob: bytes | None) -> list[float] | None:
    if not blob:
        return None
    return list(struct.unpack(f"<{len(blob) // 4}f", blob[: len(blob) // 4 * 4]))


def _json_or_empty(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"unparsed": text}
    return value if isinstance(value, dict) else {"value": value}


def _output_text(result: dict, fallback: str | None) -> str | None:
    for key in ("output", "content", "result", "text", "summary"):
        if isinstance(result.get(key), str):
            return result[key]
    return fallback


def _tables(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _columns(conn, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _pattern_rows(conn) -> list[dict]:
    embeddings = {}
    if "qe_pattern_embeddings" in _tables(conn):
        for pid, blob, dim, model in conn.execute(
            "SELECT pattern_id, embedding, dimension, model FROM qe_pattern_embeddings"
        ):
            embeddings[pid] = (_blob_to_vector(blob), dim, model)
    rows = []
    for r in conn.execute("SELECT * FROM qe_patterns"):
        r = dict(r)
        template = _json_or_empty(r.get("template_json"))
        context = _json_or_empty(r.get("context_json"))
        vector, dim, model = embeddings.get(r["id"], (None, None, None))
        domain = r.get("qe_domain") or r.get("domain") or ""
        rows.append(
            dict(
                id=r["id"],
                task=context.get("task") or "\n".join(filter(None, [r.get("name"), r.get("description")])),
                output=_output_text(template, r.get("template_json")),
                category=domain if domain in CATEGORIES else None,
                domain=domain,
                agent=context.get("agent") or r.get("pattern_type"),
                model=context.get("model") or "unknown",
                outcome="success" if (r.get("success_rate") or 0) >= 0.5 else "failure",
                quality=r.get("quality_score"),
                confidence=r.get("confidence"),
                usage_count=r.get("usage_count"),
                success_count=r.get("successful_uses"),
                input_tokens=r.get("input_tokens"),
                output_tokens=r.get("output_tokens"),
                latency_ms=r.get("latency_ms"),
                embedding=vector,
                embedding_dim=dim,
                embedding_model=model,
                created_at=r.get("created_at"),
                metadata={"aqe_table": "qe_patterns", "tier": r.get("tier"), "pattern_type": r.get("pattern_type")},
            )
        )
    return rows


def _experience_rows(conn) -> list[dict]:
    columns = _columns(conn, "captured_experiences")
    rows = []
    for r in conn.execute("SELECT * FROM captured_experiences"):
        r = dict(r)
        routing = _json_or_empty(r.get("routing_json"))
        result = _json_or_empty(r.get("result_json"))
        domain = r.get("domain") or ""
        blob = r.get("embedding") if "embedding" in columns else None
        rows.append(
            dict(
                id=r["id"],
                task=r.get("task"),
                output=_output_text(result, r.get("result_json")),
                category=domain if domain in CATEGORIES else None,
                domain=domain,
                agent=r.get("agent"),
                model=routing.get("model") or "unknown",
                outcome="success" if r.get("success") else ("failure" if r.get("error") else "partial"),
                quality=r.get("quality"),
                confidence=routing.get("confidence", AQE_DEFAULT_CONFIDENCE),
                usage_count=r.get("application_count", 0),
                success_count=r.get("reuse_success_count", 0),
                latency_ms=r.get("duration_ms"),
                embedding=_blob_to_vector(blob),
                embedding_dim=r.get("embedding_dimension") if blob else None,
                embedding_model=AQE_DEFAULT_EMBEDDING_MODEL if blob else None,
                created_at=r.get("completed_at") or r.get("started_at"),
                metadata={"aqe_table": "captured_experiences", "model_tier": r.get("model_tier"), "source": r.get("source")},
            )
        )
    return rows


def import_agentic_qe(db, path: str | Path) -> ImportSummary:
    path = Path(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = _tables(conn)
        if not tables & {"qe_patterns", "captured_experiences"}:
            raise ValueError(f"{path} has neither qe_patterns nor captured_experiences: not an agentic-qe memory.db")
        rows = (_pattern_rows(conn) if "qe_patterns" in tables else []) + (
            _experience_rows(conn) if "captured_experiences" in tables else []
        )
    finally:
        conn.close()
    records = []
    for row in rows:
        row = {k: v for k, v in row.items() if v is not None}
        records.append((json.dumps(row, sort_keys=True, default=str), row))
    return import_records(db, records, source=f"agentic-qe:{path.name}")
