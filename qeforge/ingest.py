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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from qeforge import store
from qeforge.schema import QUARANTINE_SCHEMA, InvalidRow, content_hash, is_valid_text, raw_key, validate_row

# Rows held in memory between writes: 2,000 rows of a few KB each is a few MB, whatever the file size.
BATCH_ROWS = 2000


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


def format_summary(summary: dict) -> str:
    """An import summary (ImportSummary.as_dict()) as the lines the CLI and the main job print."""
    lines = [
        f"{summary['source']}: read {summary['read']}, imported {summary['imported']}, updated {summary['updated']}, "
        f"already present {summary['already_present']}, quarantined {summary['quarantined']}"
    ]
    lines += [f"  quarantined {reason}: {n}" for reason, n in summary["quarantined_by_reason"].items()]
    for table, t in summary.get("by_table", {}).items():
        if "joined" in t:
            lines.append(f"  {table:24} read {t['read']:>5}, joined into trajectories {t['joined']:>5}")
        else:
            reasons = ", ".join(f"{r} {n}" for r, n in t["quarantined_by_reason"].items())
            lines.append(f"  {table:24} read {t['read']:>5}, imported {t['imported']:>5}, updated {t['updated']:>3}, "
                         f"quarantined {t['quarantined']:>4}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(lines)


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


class _Import:
    """One import: classifies rows as they stream in and writes them in bounded batches.

    Stored ids, hashes and quarantine keys are read once (a few hundred bytes a row); rows themselves
    are held only until the next flush, so memory stays flat as files grow.
    """

    def __init__(self, db, source: str):
        self.db, self.summary = db, ImportSummary(source=source)
        self.stored = _stored_versions(db)
        self.in_table = set(self.stored)
        self.known_quarantine = set(store.quarantine(db).to_arrow()["key"].to_pylist())
        self.now = datetime.now(timezone.utc)
        self.new: dict[str, dict] = {}  # id -> row, for ids not yet in the table
        self.updated: dict[str, dict] = {}  # id -> row, replacing the stored version
        self.superseded: list[dict] = []  # earlier versions of one id within this import: kept in history
        self.bad: list[dict] = []

    def reject(self, raw: str, reason: str, detail: str, row_id: str | None = None) -> None:
        self.summary.quarantined[reason] += 1
        key = raw_key(raw)
        if key in self.known_quarantine:
            return
        self.known_quarantine.add(key)
        # Undecodable bytes and lone surrogates are kept as \xNN / \udNNN escapes: Arrow strings must be UTF-8.
        text = raw.encode("utf-8", "surrogateescape" if _only_escaped_bytes(raw) else "backslashreplace")
        text = text.decode("utf-8", "backslashreplace")
        row_id = row_id if row_id is None or is_valid_text(row_id) else None
        self.bad.append(dict(key=key, row_id=row_id, reason=reason, detail=detail[:2000], raw=text,
                             source=self.summary.source, quarantined_at=self.now))

    def add(self, raw: str, parsed: object) -> None:
        self.summary.read += 1
        if isinstance(parsed, Exception) and not isinstance(parsed, InvalidRow):
            self.reject(raw, "malformed_json", f"{type(parsed).__name__}: {parsed}")
            return
        try:
            if isinstance(parsed, InvalidRow):
                raise parsed
            row = validate_row(parsed)
            digest = content_hash(row)
        except InvalidRow as err:
            row_id = parsed.get("id") if isinstance(parsed, dict) and isinstance(parsed.get("id"), str) else err.row_id
            self.reject(raw, err.reason, err.detail, row_id)
            return
        except Exception as err:  # noqa: BLE001 - no row may abort an import: quarantined with the error
            self.reject(raw, "invalid_row", f"{type(err).__name__}: {err}")
            return
        previous = self.stored.get(row["id"])
        if previous is not None and previous.content_hash == digest:
            self.summary.already_present += 1
            return
        if previous is not None and not is_newer(row, previous):
            self.reject(raw, "conflicting_id", f"id {row['id']} already stored with different content and not newer", row["id"])
            return
        self.stored[row["id"]] = StoredVersion(digest, row["updated_at"], row["usage_count"])
        pending = self.updated if row["id"] in self.in_table else self.new
        if row["id"] in pending:
            self.superseded.append(pending[row["id"]])
        pending[row["id"]] = {**row, "source": self.summary.source, "content_hash": digest}

    def flush(self) -> None:
        self.summary.imported += len(self.new)
        self.summary.updated += len(self.updated)
        store.add_trajectories(self.db, list(self.new.values()), list(self.updated.values()), self.superseded,
                               superseded_at=self.now)
        if self.bad:
            store.quarantine(self.db).add(pa.Table.from_pylist(self.bad, schema=QUARANTINE_SCHEMA))
        self.in_table |= set(self.new)
        self.new, self.updated, self.superseded, self.bad = {}, {}, [], []


def _only_escaped_bytes(raw: str) -> bool:
    """Lone surrogates that surrogateescape made from undecodable bytes (U+DC80..U+DCFF) can go back to bytes."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in raw)


def import_records(db, records: Iterable[tuple[str, object]], source: str, *, batch_rows: int = BATCH_ROWS) -> ImportSummary:
    """Import (raw_text, parsed) pairs. `parsed` is the decoded row, an `InvalidRow` the reader already
    knows the reason for (e.g. `no_answer`), or the decode error. One import at a time per store
    (`store.import_lock`); rows are written every `batch_rows`."""
    with store.import_lock(db):
        run = _Import(db, source)
        for i, (raw, parsed) in enumerate(records, 1):
            run.add(raw, parsed)
            if i % batch_rows == 0:
                run.flush()
        run.flush()
        return run.summary


def read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """(raw line, decoded row or the decode error), one line at a time.

    Lines end at \n only (newline="\n"): a bare \r is JSON whitespace, not a line break, and a
    trailing \r of CRLF is stripped. A UTF-8 byte-order mark is dropped (utf-8-sig). Undecodable
    bytes reach quarantine (surrogateescape) instead of aborting the file, and so does JSON nested
    too deep to decode (RecursionError)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n") as fh:
        for line in fh:
            raw = line.rstrip("\n").removesuffix("\r")
            if not raw.strip():
                continue
            try:
                yield raw, json.loads(raw)
            except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
                yield raw, err


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


def import_exchanges(db) -> tuple[ImportSummary, dict]:
    """The gateway's recorded exchanges (with the fleet's feedback) as trajectories, by the policy in
    curation/exchanges.py: (the import's summary, the conversion's counts). Re-running imports nothing
    twice; a verdict that arrives later updates its row."""
    from qeforge.curation.exchanges import SOURCE, exchange_trajectories

    names = set(db.table_names())
    if store.EXCHANGES not in names:
        return ImportSummary(SOURCE), {"exchanges_read": 0, "trajectories": 0}
    exchanges = db.open_table(store.EXCHANGES).to_arrow().to_pylist()
    feedback = db.open_table(store.FEEDBACK).to_arrow().to_pylist() if store.FEEDBACK in names else []
    rows, report = exchange_trajectories(exchanges, feedback)
    records = ((json.dumps(r, ensure_ascii=False), r) for r in rows)
    return import_records(db, records, SOURCE), report
