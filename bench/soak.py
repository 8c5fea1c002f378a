"""Soak of the serving shim on loopback: many mixed requests at high concurrency, zero tolerance.

First one request per (category, prompt) at concurrency 1 records the expected answer (greedy
decoding is deterministic); then `--requests` mixed requests at `--concurrency` clients. Counted:
5xx and other failures, cross-category mix-ups (a response whose category or text is not the one
its request's adapter gives), p50/p95 latency and requests/s. Exit status 1 on any 5xx or mix-up.

    python -m bench.soak [--requests 2000] [--concurrency 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.serving import SNIPPETS, artefacts, pct, start_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        base, adapters, origin = artefacts(Path(tmp))
        server = start_server(base, adapters, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                              limits=httpx.Limits(max_connections=args.concurrency)) as http:
                def ask(item):
                    category, snippet = item
                    started = time.perf_counter()
                    r = http.post("/v1/chat/completions", json={
                        "model": f"qeforge-{category}", "max_tokens": args.max_tokens,
                        "messages": [{"role": "user", "content": snippet}]})
                    return item, r.status_code, (r.json() if r.status_code == 200 else None), time.perf_counter() - started

                cases = [(c, s) for c in adapters for s in SNIPPETS]
                expected = {item: body["choices"][0]["message"]["content"] for item, _, body, _ in map(ask, cases)}
                distinct = len({(s, t) for (c, s), t in expected.items()})
                plan = [random.Random(i).choice(cases) for i in range(args.requests)]
                started = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(pool.map(ask, plan))
                wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(30)
    status = [code for _, code, _, _ in results]
    mixups = sum(1 for item, code, body, _ in results if code == 200 and (
        body["qeforge"]["category"] != item[0] or body["choices"][0]["message"]["content"] != expected[item]))
    latency = [t * 1000 for *_, t in results]
    report = {
        "artefacts": origin, "categories": sorted(adapters), "requests": len(results), "concurrency": args.concurrency,
        "distinct_expected_answers": distinct, "cases": len(cases),
        "status_5xx": sum(1 for c in status if c >= 500), "status_other_non_200": sum(1 for c in status if c != 200 and c < 500),
        "cross_category_mixups": mixups, "p50_ms": pct(latency, 50), "p95_ms": pct(latency, 95),
        "requests_per_s": round(len(results) / wall, 2), "wall_s": round(wall, 1),
    }
    print(json.dumps(report, indent=2))
    return 1 if report["status_5xx"] or mixups else 0


if __name__ == "__main__":
    sys.exit(main())
