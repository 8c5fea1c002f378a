"""Peak memory of a JSONL import against file size: streamed in batches vs everything held at once.

    python -m bench.import_memory [--sizes-mb 16 64]

Each import runs in a fresh process; its extra memory is peak RSS (ru_maxrss) minus the RSS after the
imports are loaded and the store is opened. Rows carry a 384-d embedding (~5 KB of JSON a row), the
shape an agentic fleet exports. "held at once" is the same importer with one batch as large as the file,
which is how the importer worked before streaming (it read the whole file into a list first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys
from qeforge import store
from qeforge.ingest import import_records, read_jsonl
db = store.connect(sys.argv[1]); store.trajectories(db); store.quarantine(db)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = import_records(db, read_jsonl(sys.argv[2]), source="bench", batch_rows=int(sys.argv[3]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(summary.imported, (peak - base) / 1024)
"""


def write_file(path: Path, megabytes: int) -> int:
    rows = 0
    with open(path, "w") as fh:
        while fh.tell() < megabytes * 2**20:
            row = {"id": f"r{rows}", "task": f"Write pytest tests for f{rows}: " + "x" * 400,
                   "output": "def test():\n    assert f() == 1\n" * 20, "model": "claude-sonnet-4-6",
                   "outcome": "success", "quality": 0.9, "confidence": 0.9, "usage_count": 3,
                   "embedding": [round((rows * 7 + i) % 997 / 997 - 0.5, 6) for i in range(384)],
                   "embedding_model": "all-MiniLM-L6-v2", "embedding_dim": 384}
            fh.write(json.dumps(row) + "\n")
            rows += 1
    return rows


def measure(path: Path, batch_rows: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as store_dir:
        out = subprocess.run([sys.executable, "-c", CHILD, store_dir, str(path), str(batch_rows)],
                             capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    print(f"{'file MB':>8} {'rows':>7} {'streamed MB':>12} {'MB/MB':>6} {'held MB':>8} {'MB/MB':>6} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.sizes_mb:
            path = Path(tmp) / f"{mb}.jsonl"
            rows = write_file(path, mb)
            _, streamed = measure(path, 2000)
            _, held = measure(path, 10**9)
            print(f"{mb:>8} {rows:>7} {streamed:>12.0f} {streamed / mb:>6.2f} {held:>8.0f} {held / mb:>6.2f} "
                  f"{held / max(streamed, 1):>6.1f}")


if __name__ == "__main__":
    main()
