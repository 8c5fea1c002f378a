"""Import trajectories into LanceDB: every row is either stored or quarantined with a reason.

Idempotent by id: a row whose id is already stored with the same content is skipped. The same id
with different content is an update when it is newer (a later `updated_at`, or without one a higher
`usage_count`): the stored row is replaced and the old version kept in `trajectory_history`. Otherwise
it is quarantined as `conflicting_id`. Quarantined raw rows are keyed by the hash of their text, so
re-importing a file adds nothing anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from qeforge import store
from qeforge.schema import QUARANTINE_SCHEMA, InvalidRow, content_hash, raw_key, validate_row


@dataclass
class ImportSummary:
    source: str
    read: int = 0
    imported: int = 0
    updated: int = 0
    already_present: int = 0
    quarantined: Counter = field(default_factory=Counter)
    by_table: dict[str, dict] = field(default_factory=dict)  # per source table (agentic-qe), when known

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "read": self.read,
            "imported": self.imported,
            "updated": self.updated,
            "already_present": self.already_present,
            "quarantined": self.quarantined_total,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            **({"by_table": self.by_table} if self.by_table else {}),
        }

    def add(self, other: "ImportSummary") -> None:
        self.read += other.read
        self.imported += other.imported
        self.updated += other.updated
        self.already_present += other.already_present
        self.quarantined.update(other.quarantined)


@dataclass(frozen=True)
class StoredVersion:
    content_hash: str
    updated_at: datetime | None
    usage_count: int


def _stored_versions(db) -> dict[str, StoredVersion]:
    table = store.trajectories(db).to_arrow().select(["id", "content_hash", "updated_at", "usage_count"])
    return {
        i: StoredVersion(h, u, n or 0)
        for i, h, u, n in zip(*(table[c].to_pylist() for c in ("id", "content_hash", "updated_at", "usage_count")))
    }


def is_newer(row: dict, stored: StoredVersion) -> bool:
    """An incoming version of a stored id is an update when its updated_at is later; when neither
    carries a timestamp, when it has been used more often (agentic-qe bumps usage in place)."""
    if row["updated_at"] is not None and stored.updated_at is not None:
        return row["updated_at"] > stored.updated_at
    if row["updated_at"] is not None:
        return True
    return stored.updated_at is None and (row["usage_count"] or 0) > stored.usage_count


def import_records(db, records: list[tuple[str, object]], source: str) -> ImportSummary:
    """Import (raw_text, parsed) pairs. `parsed` is the decoded row, an `InvalidRow` the reader already
    knows the reason for (e.g. `no_answer`), or the decode error."""
    summary = ImportSummary(source=source)
    stored = _stored_versions(db)
    in_table = set(stored)
    known_quarantine = set(store.quarantine(db).to_arrow()["key"].to_pylist())
    now = datetime.now(timezone.utc)
    new: dict[str, dict] = {}  # id -> row, for ids not yet in the table
    updated: dict[str, dict] = {}  # id -> row, replacing the stored version
    superseded: list[dict] = []  # earlier versions of one id within this import: kept in history
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
        if isinstance(parsed, Exception) and not isinstance(parsed, InvalidRow):
            reject(raw, "malformed_json", str(parsed))
            continue
        try:
            if isinstance(parsed, InvalidRow):
                raise parsed
            row = validate_row(parsed)
        except InvalidRow as err:
            row_id = parsed.get("id") if isinstance(parsed, dict) and isinstance(parsed.get("id"), str) else err.row_id
            reject(raw, err.reason, err.detail, row_id)
            continue
        digest = content_hash(row)
        previous = stored.get(row["id"])
        if previous is not None and previous.content_hash == digest:
            summary.already_present += 1
            continue
        if previous is not None and not is_newer(row, previous):
            reject(raw, "conflicting_id", f"id {row['id']} already stored with different content and not newer", row["id"])
            continue
        stored[row["id"]] = StoredVersion(digest, row["updated_at"], row["usage_count"])
        pending = updated if row["id"] in in_table else new
        if row["id"] in pending:
            superseded.append(pending[row["id"]])
        pending[row["id"]] = {**row, "source": source, "content_hash": digest}

    summary.imported, summary.updated = len(new), len(updated)
    store.add_trajectories(db, list(new.values()), list(updated.values()), superseded, superseded_at=now)
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


def import_agentic_qe(db, path: str | Path) -> ImportSummary:
    """Import an agentic-qe memory.db (read from a consistent snapshot; the live store is never written)."""
    from qeforge.agentic_qe import TRAJECTORY_TABLES, is_agentic_qe_store, read_store, snapshot

    path = Path(path)
    conn = snapshot(path)
    try:
        if not is_agentic_qe_store(conn):
            raise ValueError(f"{path} has none of {', '.join(TRAJECTORY_TABLES)}: not an agentic-qe memory.db")
        records, joined = read_store(conn)
    finally:
        conn.close()
    summary = ImportSummary(source=f"agentic-qe:{path.name}")
    for table, table_records in records.items():
        part = import_records(db, table_records, source=f"agentic-qe:{path.name}:{table}")
        summary.add(part)
        summary.by_table[table] = {k: v for k, v in part.as_dict().items() if k != "source"}
    summary.by_table.update(joined)
    return summary
