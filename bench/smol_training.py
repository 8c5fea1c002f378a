"""Training speed of the smol profile on CPU: LoRA r=16 on SmolLM2-135M-Instruct's 7 linear modules.

Each mode runs the SAME sft.main (smol recipe: 4 rows x 512 tokens per step, fp32) for a fixed
number of optimizer steps in its own spawned process, so each reports its own peak RSS:
  - unpacked (the baseline): packing: false, each batch right-padded to its longest chat;
  - packed: the recipe default, BFD packing, padding-free rows of up to 512 tokens.
Tokens are counted from the batches fed to the model (bench.training_packing.batch_meter):
tokens/s = non-pad tokens / training wall time (model load, evaluation and saving excluded).
Then, per category, the time the last `qeforge run --profile smol` spent training (its
training_summary.json files under QEFORGE_HOME).

    python -m bench.smol_training [--steps 4] [--n 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CATEGORY = "test-generation"  # the longest chats; its recipe sets max_length 512 like the others


def smol_base() -> Path:
    from qeforge.locations import default_locations
    from qeforge.training.base_sources import SMOL_SOURCE, resolve_base

    return Path(resolve_base(SMOL_SOURCE, Path(default_locations().models_dir) / "base").name_or_path)


def run_mode(base: str, data: str, out: str, steps: int, packing: bool) -> dict:
    """One timed SFT run (in a fresh process); its numbers and the process's peak RSS."""
    from bench.training_packing import batch_meter
    from qeforge.training.config import load_recipe
    from qeforge.training.recipes import recipe_path
    from qeforge.training.sft import main

    overrides = {"model_name_or_path": base, "dataset_path": data, "category": CATEGORY, "output_dir": out,
                 "max_steps": steps, "packing": packing, "disable_tqdm": True,
                 "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False}
    meter = batch_meter()
    summary = main(*load_recipe(recipe_path("smol", CATEGORY), overrides=overrides), callbacks=[meter])
    return {"steps": summary["global_step"], "wall": meter.seconds, "real": meter.real, "positions": meter.positions,
            "tps": meter.real / meter.seconds, "trainable": summary["trainable_params"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # ru_maxrss is KiB on Linux


def per_category_times() -> list[dict]:
    """The last smol main job's training time per category, from its training summaries."""
    from qeforge.categories import CATEGORIES
    from qeforge.locations import default_locations

    rows = []
    for category in CATEGORIES:
        found = sorted((Path(default_locations().adapters_dir) / category).glob("*/training_summary.json"),
                       key=lambda p: p.stat().st_mtime)
        summary = json.loads(found[-1].read_text()) if found else None
        if summary and "SmolLM2" in str(summary.get("base_model")):
            rows.append({"category": category, **{k: summary.get(k) for k in (
                "n_train", "global_step", "train_tokens", "train_runtime_s", "wall_time_s", "tokens_per_second")},
                "epochs": summary["recipe"].get("num_train_epochs")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of 4 x 512 tokens, the same for both modes")
    parser.add_argument("--n", type=int, default=1500, help="demo JSONL lines to draw chats from")
    args = parser.parse_args()

    from bench.training_packing import demo_dataset

    base = smol_base()
    spawn = get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 2 validation chats: sft.main always measures the base's val loss first, and here only the
        # timed training steps matter (16 chats took 6 minutes of base evaluation on the shared cores).
        demo_dataset(args.n, 0, tmp / "data", n_val=2)
        res = {}
        # Baseline first, so warm-up costs (page cache of the 538 MB checkpoint) fall on it.
        for mode, packing in (("unpacked", False), ("packed", True)):
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                res[mode] = pool.submit(run_mode, str(base), str(tmp / "data"), str(tmp / mode), args.steps,
                                        packing).result()

    print(f"LoRA r=16 on {res['packed']['trainable']:,} trainable params, 4 x 512 tokens per step, fp32, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'mode':9} {'steps':>5} {'wall s':>7} {'non-pad':>8} {'positions':>9} {'tokens/s':>9} {'peak RSS':>9}")
    for mode, r in res.items():
        print(f"{mode:9} {r['steps']:5d} {r['wall']:7.1f} {r['real']:8d} {r['positions']:9d} {r['tps']:9.1f} "
              f"{r['peak_rss_mb']:7.0f}MB")
    p, u = res["packed"], res["unpacked"]
    print(f"packed / unpacked tokens/s: {p['tps'] / u['tps']:.2f}x (non-pad share unpacked "
          f"{u['real'] / u['positions']:.1%}); seconds per 2,048-token step packed: {p['wall'] / p['steps']:.1f}")

    rows = per_category_times()
    if rows:
        print("\nlast `qeforge run --profile smol`, training per category:")
        print(f"{'category':20} {'train':>5} {'epochs':>6} {'steps':>5} {'tokens':>7} {'train s':>8} {'wall s':>7} {'tokens/s':>8}")
        for r in rows:
            print(f"{r['category']:20} {r['n_train']:5d} {r['epochs']:6} {r['global_step']:5d} {int(r['train_tokens'] or 0):7d} "
                  f"{r['train_runtime_s'] or 0:8.0f} {r['wall_time_s'] or 0:7.0f} {r['tokens_per_second'] or 0:8.1f}")
    else:
        print("\n(no smol adapters under QEFORGE_HOME: run `qeforge run --profile smol` for the per-category times)")


if __name__ == "__main__":
    main()
