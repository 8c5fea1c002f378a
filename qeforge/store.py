"""LanceDB tables of the ReasoningBank: `trajectories`, `quarantine`, `embeddings`."""

from __future__ import annotations

import lancedb
import pyarrow as pa
from qeforge.schema import QUARANTINE_SCHEMA, TRAJECTORY_SCHEMA

TRAJECTORIES = "trajectories"
QUARANTINE = "quarantine"
EMBEDDINGS = "embeddings"


def connect(uri: str, storage_options: dict | None = None) -> lancedb.DBConnection:
    return lancedb.connect(uri, storage_options=storage_options or None)


def open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema):
    """Open a table, creating it empty with `schema` on first use."""
    if name in db.table_names():
        return db.open_table(name)
    return db.create_table(name, schema=schema)


def trajectories(db):
    return open_table(db, TRAJECTORIES, TRAJECTORY_SCHEMA)


def quarantine(db):
    return open_table(db, QUARANTINE, QUARANTINE_SCHEMA)

