"""Recording's cost on the request path: one gateway, its recorder off and on in turns, the same load.

A tiny base and one random adapter per category, served in-process; 8 clients send 200 mixed-category
calls (8 new tokens each) per turn, off and on in alternating order, three rounds, so drift in the
machine's load falls on both. Prints p50/p95 latency and requests/s per turn, the rows the `exchanges` table holds (every
call of the "on" turns, warm-ups included) and what the recorder dropped.

    python -m bench.recording [--rounds 3] [--clients 8] [--calls 25]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.serving import SNIPPETS, pct, tiny_artefacts
from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.serving.app import create_app
from qeforge.serving.background import BackgroundServer
from qeforge.serving.engine import Engine
from qeforge.serving.recording import EXCHANGES, Recorder
from qeforge.serving.source import DirectorySource

WARM = 8  # calls before each timed turn: the first batch of a server pays for lazy setup


def turn(engine: Engine, recorder: Recorder, clients: int, calls: int) -> dict:
    with BackgroundServer(create_app(engine, recorder=recorder), startup_timeout_s=120) as server, \
            httpx.Client(base_url=server.url, timeout=300) as http:
        def one(i: int) -> float:
            start = time.perf_counter()
            r = http.post("/v1/chat/completions", json={
                "model": f"qeforge-{CATEGORIES[i % len(CATEGORIES)]}", "max_tokens": 8,
                "messages": [{"role": "user", "content": SNIPPETS[i % len(SNIPPETS)]}]})
            r.raise_for_status()
            return time.perf_counter() - start

        for i in range(WARM):
            one(i)
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            latencies = list(pool.map(one, range(clients * calls)))
            wall = time.perf_counter() - start
    return {"p50_ms": round(pct(latencies, 50) * 1000, 1), "p95_ms": round(pct(latencies, 95) * 1000, 1),
            "req_per_s": round(len(latencies) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=25, help="per client, per turn")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    base, adapters = tiny_artefacts(root)
    engine = Engine(DirectorySource(base, adapters, None), onnx_cache_dir=root / "onnx")
    db = store.connect(str(root / "lancedb"))
    turns, dropped = {"off": [], "on": []}, 0
    for r in range(args.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            recorder = Recorder(db, enabled=mode == "on")
            turns[mode].append(turn(engine, recorder, args.clients, args.calls))
            dropped += recorder.dropped
    print(json.dumps({"turns": turns, "rows_recorded": db.open_table(EXCHANGES).count_rows(),
                      "rows_expected": args.rounds * (WARM + args.clients * args.calls), "dropped": dropped,
                      "load_average": [round(x, 1) for x in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
