"""Evaluation benchmark: scoring throughput, sandboxed test runs/s, and the routing sweep, in one run.

  1. scoring: the three text-scored categories' specs on demo outputs (good, partial and failed
     answers), examples/s through score_outputs (parsers + local evaluate modules).
  2. sandbox: real demo test suites against their focal code, sequential vs a pool of
     `--processes` workers (each run is a subprocess: pytest + coverage + mutants), runs/s and speedup.
  3. sweep: routing.sweep on 10k synthetic examples (target: < 1 s), and select_threshold on it.

    python -m bench.evaluation [--sandbox-runs 16] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def demo_rows(n: int = 1200) -> list[dict]:
    from qeforge.demo import generate_demo_lines

    rows = []
    for line in generate_demo_lines(n=n, seed=0):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("metadata"), dict) and row.get("category") and row.get("output"):
            rows.append(row)
    return rows


def bench_scoring(rows: list[dict], repeats: int = 3) -> dict:
    from qeforge.evaluation.scoring import score_outputs
    from qeforge.evaluation.spec import load_spec

    out = {}
    for category in ("coverage-analysis", "flaky-detection", "code-review"):
        spec = load_spec(category)
        part = [r for r in rows if r["category"] == category]
        examples = [{"id": r["id"], "metadata": r["metadata"], "reference": r["output"]} for r in part]
        outputs = [r["output"] for r in part]
        score_outputs(spec, outputs[:2], examples[:2])  # loads the evaluate modules once
        started = time.perf_counter()
        for _ in range(repeats):
            score_outputs(spec, outputs, examples)
        seconds = time.perf_counter() - started
        out[category] = {"examples": len(part), "examples_per_s": round(repeats * len(part) / seconds, 1)}
    return out


def bench_sandbox(rows: list[dict], runs: int, processes: int) -> dict:
    from qeforge.evaluation.sandbox import run_many, run_tests
    from qeforge.evaluation.test_generation import extract_tests, make_mutants

    jobs = []
    for r in rows:
        if r["category"] == "test-generation" and r.get("outcome") == "success" and extract_tests(r["output"]):
            focal = r["metadata"]["focal_code"]
            jobs.append({"test_source": extract_tests(r["output"]), "focal_source": focal,
                         "module": r["metadata"]["module"], "mutants": make_mutants(focal, 3)})
        if len(jobs) == runs:
            break
    started = time.perf_counter()
    sequential = [run_tests(**job) for job in jobs]
    t_seq = time.perf_counter() - started
    started = time.perf_counter()
    pooled = run_many(jobs, processes=processes)
    t_pool = time.perf_counter() - started
    return {
        "runs": len(jobs),
        "sequential_runs_per_s": round(len(jobs) / t_seq, 2),
        f"pool{processes}_runs_per_s": round(len(jobs) / t_pool, 2),
        "speedup": round(t_seq / t_pool, 2),
        "all_passed": all(r.status == "ok" and r.failed == 0 for r in sequential + pooled),
        "mean_line_coverage": round(float(np.mean([r.line_coverage for r in pooled])), 3),
    }


def bench_sweep(n: int = 10_000, repeats: int = 5) -> dict:
    from qeforge.evaluation.routing import select_threshold, sweep

    rng = np.random.default_rng(0)
    confidence = rng.normal(size=n)
    claude = rng.uniform(0.8, 1.0, size=n)
    local = np.clip(claude * (0.7 + 0.2 * confidence) + rng.normal(0, 0.1, size=n), 0, None)
    tokens_in, tokens_out = rng.integers(200, 2000, size=n), rng.integers(50, 800, size=n)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        table = sweep(confidence, local, claude, input_tokens=tokens_in, output_tokens=tokens_out)
        chosen = select_threshold(table, 0.95)
        best = min(best, time.perf_counter() - started)
    return {"examples": n, "sweep_and_select_s": round(best, 4), "target_s": 1.0, "meets_target": best < 1.0,
            "chosen_local_share": round(float(chosen["local_share"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandbox-runs", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    rows = demo_rows()
    results = {"scoring": bench_scoring(rows), "sandbox": bench_sandbox(rows, args.sandbox_runs, args.processes),
               "sweep": bench_sweep()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
