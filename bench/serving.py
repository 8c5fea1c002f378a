"""Serving benchmark: `qeforge serve` on loopback under a bounded load, printed as JSON.

  1. load: per category (`--per-category` requests) and mixed (`--requests`), `--concurrency` clients
     (httpx): p50/p95 latency, requests/s.
  2. adapter switch: server-side time to activate the request's adapter, on requests that switched
     (target < 100 ms, goal < 5 ms with resident adapters).
  3. routing decision: signal computation + threshold compare, excluding generation (target < 1 ms);
     mean_logprob from the server, knn_similarity (MiniLM + LanceDB) measured in-process.
  4. shim overhead (target < 5%), one request at a time: client latency minus the server's own
     Engine.complete time; and the same prompts via `Engine.complete` in-process vs over HTTP, interleaved.

Uses the embedded artefacts (.qeforge/models) when present, else builds tiny ones in a temp dir.

    python -m bench.serving [--requests 200] [--concurrency 4] [--per-category 50] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from qeforge.categories import CATEGORIES

SNIPPETS = [
    "def add(a, b):\n    return a + b",
    "def is_even(n):\n    return n % 2 == 0",
    "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))",
    "def test_sleep():\n    time.sleep(random.random())\n    assert fetch() is not None",
    "--- a/app.py\n+++ b/app.py\n@@\n-    return items[0]\n+    return items[1]",
    "def mean(xs):\n    return sum(xs) / len(xs)",
]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 4)


def tiny_artefacts(root: Path) -> tuple[str, dict[str, Path]]:
    """A tiny base and one random-LoRA adapter per category (as in tests/test_serving.py)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages([{"role": "system", "content": SYSTEM_PROMPTS[c]}, {"role": "user", "content": s},
                              {"role": "assistant", "content": f"def test_{i}():\n    assert True"}])
             for i, s in enumerate(SNIPPETS * 8) for c in CATEGORIES]
    base = build_tiny_base(texts, root / "base", steps=60)
    adapters = {}
    for i, c in enumerate(CATEGORIES):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=16, lora_alpha=32, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        adapters[c] = root / "adapters" / c / "tiny"
        model.save_pretrained(adapters[c])
    return str(base), adapters


def artefacts(tmp: Path) -> tuple[str, dict[str, Path], str]:
    from qeforge.locations import default_locations
    from qeforge.training.adapters import latest_adapters

    found = latest_adapters(default_locations().adapters_dir)
    bases = {a["base_model"] for a in found.values()}
    if found and len(bases) == 1 and Path(next(iter(bases))).exists():
        return bases.pop(), {c: Path(a["adapter_dir"]) for c, a in found.items()}, "embedded"
    base, adapters = tiny_artefacts(tmp)
    return base, adapters, "built"


def start_server(base: str, adapters: dict[str, Path], port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qeforge.cli", "serve", "--port", str(port), "--base", base]
    for c, p in adapters.items():
        cmd += ["--adapter", f"{c}={p}"]
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "QEFORGE_API_KEY")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up")


def load(url: str, plan: list[tuple[str, str]], concurrency: int, max_tokens: int) -> dict:
    """Send plan [(category, snippet)] with `concurrency` workers; latency and server-side timings."""
    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as http:
        def one(item):
            c, s = item
            start = time.perf_counter()
            r = http.post("/v1/chat/completions", json={"model": f"qeforge-{c}", "max_tokens": max_tokens,
                                                         "messages": [{"role": "user", "content": s}]})
            r.raise_for_status()
            return time.perf_counter() - start, r.json()["qeforge"]

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, plan))
        wall = time.perf_counter() - start
    lat = [r[0] * 1000 for r in results]
    queue = [r[1]["timings_ms"]["queue"] for r in results]  # waiting for the model: generation is serialized
    service = [r[1]["timings_ms"]["engine"] - r[1]["timings_ms"]["queue"] for r in results]
    return {"requests": len(plan), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
            "requests_per_s": round(len(plan) / wall, 2), "service_p50_ms": pct(service, 50),
            "queue_p50_ms": pct(queue, 50),
            "_routes": [r[1] for r in results]}


def _one(http, c: str, s: str, max_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    r = http.post("/v1/chat/completions", json={"model": f"qeforge-{c}", "max_tokens": max_tokens,
                                                 "messages": [{"role": "user", "content": s}]})
    return (time.perf_counter() - start) * 1000, r.raise_for_status().json()["qeforge"]["timings_ms"]["engine"]


def overhead_server_side(url: str, cats: list[str], n: int, max_tokens: int) -> dict:
    """One request at a time: client latency minus the server's own Engine.complete time for that
    request (HTTP, JSON, validation, thread hop). Immune to load from other processes."""
    with httpx.Client(base_url=url, timeout=300) as http:
        runs = [_one(http, cats[i % len(cats)], SNIPPETS[i % len(SNIPPETS)], max_tokens) for i in range(n)]
    added = [h - e for h, e in runs]
    return {"requests": n, "engine_p50_ms": pct([e for _, e in runs], 50), "http_p50_ms": pct([h for h, _ in runs], 50),
            "added_p50_ms": pct(added, 50), "added_p95_ms": pct(added, 95),
            "overhead_pct_p50": pct([100 * (h - e) / e for h, e in runs], 50)}


def overhead_interleaved(url: str, engine, cats: list[str], n: int, max_tokens: int) -> dict:
    """Each prompt via Engine.complete in this process, then over HTTP (noisy on shared cores)."""
    inproc, http_ms = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for i in range(n):
            c, s = cats[i % len(cats)], SNIPPETS[i % len(SNIPPETS)]
            start = time.perf_counter()
            engine.complete(f"qeforge-{c}", [{"role": "user", "content": s}], max_tokens=max_tokens)
            inproc.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)  # let this process's idle OpenMP threads stop spinning before the server computes
            http_ms.append(_one(http, c, s, max_tokens)[0])
    a, b = statistics.median(inproc), statistics.median(http_ms)
    return {"requests": n, "in_process_p50_ms": round(a, 3), "http_p50_ms": round(b, 3),
            "overhead_pct": round(100 * (b - a) / a, 2)}


def knn_routing(base: str, adapters: dict[str, Path], tmp: Path, n: int = 40) -> dict:
    """knn_similarity routing time in-process: MiniLM embedding + LanceDB nearest known-good."""
    from qeforge import store
    from qeforge.embedding import embed_texts
    from qeforge.serving.engine import Engine
    from qeforge.serving.source import DirectorySource

    db = store.connect(str(tmp / "lancedb"))
    rows = [(c, s) for c in adapters for s in SNIPPETS] * 20
    store.write_known_good(db, [str(i) for i in range(len(rows))], [c for c, _ in rows], [0.9] * len(rows),
                           embed_texts([f"{s}\n# {i}" for i, (_, s) in enumerate(rows)]), "bench")
    policy = {"version": "bench-knn", "categories": {c: {"signal": "knn_similarity", "threshold": 0.5} for c in adapters}}
    engine = Engine(DirectorySource(base, adapters, policy), escalation=None, db=db)
    routing = []
    for i in range(n):
        c = list(adapters)[i % len(adapters)]
        r = engine.complete(f"qeforge-{c}", [{"role": "user", "content": SNIPPETS[i % len(SNIPPETS)]}], max_tokens=1)
        routing.append(r.timings["routing_s"] * 1000)
    return {"requests": n, "known_good_rows": len(rows), "p50_ms": pct(routing[1:], 50), "p95_ms": pct(routing[1:], 95),
            "note": "MiniLM embedding of the user text + LanceDB search, computed before generating"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="mixed-category requests")
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--overhead-requests", type=int, default=60)
    parser.add_argument("--skip-knn", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from qeforge.serving.engine import Engine
    from qeforge.serving.source import DirectorySource

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, adapters, origin = artefacts(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(base, adapters, port)
        try:
            cats = list(adapters)
            load(url, [(c, SNIPPETS[0]) for c in cats], 1, args.max_tokens)  # warm-up
            per_category = {c: load(url, [(c, SNIPPETS[i % len(SNIPPETS)]) for i in range(args.per_category)],
                                    args.concurrency, args.max_tokens) for c in cats}
            mixed = load(url, [(cats[i % len(cats)], SNIPPETS[i % len(SNIPPETS)]) for i in range(args.requests)],
                         args.concurrency, args.max_tokens)
            routes = mixed.pop("_routes")
            single = [r for v in per_category.values() for r in v.pop("_routes")]
            switches = [r["timings_ms"]["switch"] for r in routes + single if r["adapter_switched"]]
            stays = [r["timings_ms"]["switch"] for r in routes + single if not r["adapter_switched"]]
            routing = [r["timings_ms"]["routing"] for r in routes]
            shim = {"target_pct": 5,
                    "server_side": overhead_server_side(url, cats, args.overhead_requests, args.max_tokens)}
            engine = Engine(DirectorySource(base, adapters), escalation=None)
            engine.complete(f"qeforge-{cats[0]}", [{"role": "user", "content": SNIPPETS[0]}], max_tokens=4)
            shim["interleaved"] = overhead_interleaved(url, engine, cats, args.overhead_requests, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(30)
        report = {
            "artefacts": {"origin": origin, "base": base, "adapters": {c: str(p) for c, p in adapters.items()}},
            "settings": {"concurrency": args.concurrency, "max_tokens": args.max_tokens, "backend": "torch",
                         "torch_threads": __import__("torch").get_num_threads(), "cpus": os.cpu_count()},
            "per_category": per_category,
            "mixed": mixed,
            "adapter_switch_ms": {"switched_requests": len(switches), "p50": pct(switches, 50), "p95": pct(switches, 95),
                                  "no_switch_requests": len(stays), "no_switch_p50": pct(stays, 50), "target": 100, "goal": 5},
            "routing_decision_ms": {"mean_logprob": {"p50": pct(routing, 50), "p95": pct(routing, 95)}, "target_p50": 1},
            "shim_overhead": shim,
        }
        if not args.skip_knn:
            report["routing_decision_ms"]["knn_similarity"] = knn_routing(base, adapters, tmp)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
