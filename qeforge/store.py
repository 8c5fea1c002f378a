"""LanceDB tables of the ReasoningBank: `trajectories`, `trajectory_history` (the versions an update
replaced), `quarantine`, `embeddings`, and `known_good` (the current dataset version's training rows,
which the router's similarity signal searches)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from qeforge.schema import QUARANTINE_SCHEMA, TRAJECTORY_SCHEMA

HISTORY_SCHEMA = TRAJECTORY_SCHEMA.append(pa.field("superseded_at", pa.timestamp("us", tz="UTC")))

TRAJECTORIES = "trajectories"
HISTORY = "trajectory_history"
QUARANTINE = "quarantine"
EMBEDDINGS = "embeddings"
KNOWN_GOOD = "known_good"
EXCHANGES = "exchanges"  # every call the gateway handled (serving/recording.py)
FEEDBACK = "feedback"  # the fleet's verdicts on answers, by exchange id (POST /v1/feedback)


def connect(uri: str, storage_options: dict | None = None) -> lancedb.DBConnection:
    return lancedb.connect(uri, storage_options=storage_options or None)


def open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema):
    """Open a table, creating it empty with `schema` on first use. A table written by an older schema
    gets the fields it lacks, as null columns (every field added since the first release is optional)."""
    if name not in db.table_names():
        return db.create_table(name, schema=schema)
    table = db.open_table(name)
    missing = [f for f in schema if f.name not in table.schema.names] if schema is not None else []
    if missing:
        table.add_columns(missing)
    return table


@contextlib.contextmanager
def import_lock(db):
    """One import at a time per local store: two imports of one file would otherwise both see an id
    as new and store it twice. An exclusive flock on <store>/.import.lock, released when the process
    dies. While held, temp files a killed writer left in the imported tables are removed.

    Object stores (s3://, gs://) have no file lock here: run one importer per store there."""
    uri = str(db.uri)
    if "://" in uri and not uri.startswith("file://"):
        yield
        return
    root = Path(uri.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".import.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            remove_orphan_temp_files(root)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_orphan_temp_files(root: Path) -> int:
    """Lance writes data files as data/.tmp* and renames them on commit; a writer killed in between
    leaves them behind. Only the tables imports write, and only under the import lock."""
    removed = 0
    for table in (TRAJECTORIES, QUARANTINE, HISTORY):
        for tmp in (root / f"{table}.lance" / "data").glob(".tmp*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
                removed += 1
    return removed


def trajectories(db):
    return open_table(db, TRAJECTORIES, TRAJECTORY_SCHEMA)


def quarantine(db):
    return open_table(db, QUARANTINE, QUARANTINE_SCHEMA)


def history(db):
    return open_table(db, HISTORY, HISTORY_SCHEMA)


def _id_filter(ids) -> str:
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    return f"id IN ({quoted})"


def add_trajectories(db, new: list[dict], updated: list[dict], superseded: list[dict], superseded_at) -> None:
    """Append `new` rows and replace stored rows by id with `updated`. The versions replaced (stored
    ones, and `superseded` earlier versions from the same import) go to `trajectory_history` first:
    a crash in between leaves the old row in place, and re-importing redoes the update."""
    table = trajectories(db)
    old = pa.Table.from_pylist(superseded, schema=TRAJECTORY_SCHEMA)
    if updated:
        ids = [r["id"] for r in updated]
        stored = table.search().where(_id_filter(ids)).limit(len(ids)).to_arrow()
        old = pa.concat_tables([old, stored.select(TRAJECTORY_SCHEMA.names).cast(TRAJECTORY_SCHEMA)])
    if old.num_rows:
        stamp = pa.array([superseded_at] * old.num_rows, HISTORY_SCHEMA.field("superseded_at").type)
        history(db).add(old.append_column(HISTORY_SCHEMA.field("superseded_at"), stamp))
    if updated:
        data = pa.Table.from_pylist(updated, schema=TRAJECTORY_SCHEMA)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
    if new:
        table.add(pa.Table.from_pylist(new, schema=TRAJECTORY_SCHEMA))


def write_embeddings(db, ids, categories, qualities, vectors, task_hashes):
    """Replace `embeddings` with one task vector per kept trajectory (nearest-neighbour lookups, sensors,
    and the next curation's cache: `task_vectors`)."""
    vectors = np.asarray(vectors, dtype=np.float32)  # (rows, dim), also when there are no rows
    table = pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "task_sha256": pa.array(list(task_hashes), pa.string()),
            # A row the classifier has not categorized yet has no category: NaN from pandas, stored as null.
            "category": pa.array(list(categories), pa.string(), from_pandas=True),
            "quality": pa.array(list(qualities), pa.float64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        }
    )
    return db.create_table(EMBEDDINGS, data=table, mode="overwrite")


def task_vectors(db) -> dict[str, np.ndarray]:
    """task text sha256 -> its vector, from the last curation's `embeddings` (empty before the first, or
    from a table written before the hash was kept). The embedding model is fixed, so a text's vector is too."""
    if EMBEDDINGS not in db.table_names():
        return {}
    table = db.open_table(EMBEDDINGS).to_arrow()
    if "task_sha256" not in table.column_names:
        return {}
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    return dict(zip(table.column("task_sha256").to_pylist(), vectors))


def write_known_good(db, ids, categories, qualities, vectors, dataset_version: str):
    """Replace `known_good` with one dataset version's training rows (what the adapters learned from)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    table = pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "category": pa.array(list(categories), pa.string()),
            "quality": pa.array(list(qualities), pa.float32()),
            "dataset_version": pa.array([dataset_version] * len(vectors), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        }
    )
    return db.create_table(KNOWN_GOOD, data=table, mode="overwrite")
