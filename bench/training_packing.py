"""Training benchmark on the tiny base: BFD packing vs padded batches, in the same run.

Runs the SAME LoRA SFT (qeforge.training.sft.main, tiny recipe) twice, with a fixed max_steps
for both (same optimizer steps, same per_device_train_batch_size and max_length):
  - packed:   the recipe default, packing: true + packing_strategy: bfd (padding-free rows);
  - unpacked: packing: false (each batch right-padded to its longest conversation).
Token counts come from the batches actually fed to the model (a forward pre-hook on the
training model): positions = input_ids.numel(), non-pad = attention_mask.sum() when present;
a padding-free row has no attention_mask and no pad (the recipe sets no pad_to_multiple_of),
so all its positions are real. tokens/s = non-pad tokens / train wall time (on_train_begin ->
on_train_end: excludes model load, the base/final evaluations and the adapter save).
Also prints the tiny adapter's size on disk and Phi-4's r=16 adapter size from its config.
Targets: packed non-pad share >= 95%, packed tokens/s >= 2x unpacked, Phi-4 adapter < 300 MB.

    python -m bench.training_packing [--steps 10] [--n 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
CATEGORY = "test-generation"  # the tiny recipe is one file for all categories; this only names it


def demo_dataset(n: int, seed: int, out_dir: Path, n_val: int = 16) -> list[str]:
    """Successful, categorised demo trajectories of all four categories as a train/validation
    DatasetDict with a `messages` column (all sft.main reads; id/category kept as provenance).
    Returns the rendered chat texts, the tiny base's pretraining corpus."""
    import random

    from datasets import Dataset, DatasetDict

    from qeforge.categories import CATEGORIES
    from qeforge.curation.export import to_messages
    from qeforge.demo import generate_demo_lines
    from qeforge.training.tokenizer import render_messages

    rows, seen = [], set()
    for line in generate_demo_lines(n, seed, with_embeddings=False):
        try:
            r = json.loads(line)
        except ValueError:
            continue  # the demo plants broken lines on purpose
        if not isinstance(r, dict) or r.get("outcome") != "success" or r.get("category") not in CATEGORIES:
            continue  # failures, uncategorised rows and unknown labels ("perf-testing") are not SFT data
        if not isinstance(r.get("task"), str) or not isinstance(r.get("output"), str) or r["task"] in seen:
            continue
        seen.add(r["task"])  # exact duplicates out, as curation would
        rows.append({"id": str(r.get("id")), "category": r["category"],
                     "messages": to_messages(r["category"], r["task"], r["output"])})
    random.Random(seed).shuffle(rows)
    val, train = rows[:n_val], rows[n_val:]
    DatasetDict(train=Dataset.from_list(train), validation=Dataset.from_list(val)).save_to_disk(str(out_dir))
    return [render_messages(r["messages"]) for r in rows]


def batch_meter():
    """A callback counting token positions / non-pad tokens of every training forward, and train wall time."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self):
            self.positions = self.real = self.forwards = 0
            self.seconds, self._handle, self._t0 = 0.0, None, None

        def _hook(self, module, args, kwargs):
            if not module.training:  # evaluation forwards are not training throughput
                return
            ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")
            self.positions += ids.numel()
            self.real += int(mask.sum()) if mask is not None else ids.numel()
            self.forwards += 1

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)
            self._t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self._t0
            self._handle.remove()

    return Meter()


def run_sft(base: Path, data: Path, out: Path, steps: int, packing: bool) -> dict:
    from qeforge.training.recipes import recipe_path
    from qeforge.training.config import load_recipe
    from qeforge.training.sft import main

    overrides = {
        "model_name_or_path": str(base), "dataset_path": str(data), "category": CATEGORY,
        "output_dir": str(out), "max_steps": steps, "packing": packing,
        # No mid-run eval/checkpoints: the timed window is training steps only.
        "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False,
    }
    meter = batch_meter()
    summary = main(*load_recipe(recipe_path("tiny", CATEGORY), overrides=overrides), callbacks=[meter])
    return {"steps": summary["global_step"], "wall": meter.seconds, "real": meter.real,
            "positions": meter.positions, "share": meter.real / max(1, meter.positions),
            "tps": meter.real / meter.seconds, "trl_tokens": summary["train_tokens"],
            "adapter_bytes": (out / "adapter_model.safetensors").stat().st_size,
            "trainable": summary["trainable_params"]}


def lora_params_formula(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, r: int) -> int:
    """r*(in+out) per LoRA'd linear per layer (A is r x in, B is out x r)."""
    head_dim = hidden // heads
    qkv_out = (heads + 2 * kv_heads) * head_dim  # fused q, k, v
    shapes = [(hidden, qkv_out), (hidden, hidden), (hidden, 2 * inter), (inter, hidden)]  # qkv, o, gate_up, down
    return layers * sum(r * (i + o) for i, o in shapes)


def phi4_adapter(r: int = 16) -> tuple[int, int]:
    """Phi-4's published config as a Phi3Config; trainable LoRA params by formula and by peft on meta."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=10, vocab_size=100352)
    formula = lora_params_formula(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                                  config.num_attention_heads, config.num_key_value_heads, r)
    # Meta device: the 14.7B base and the adapter are shapes only, nothing is allocated.
    with torch.device("meta"):
        model = get_peft_model(Phi3ForCausalLM(config),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return formula, counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500, help="demo JSONL lines to draw examples from")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps, the same for both runs")
    parser.add_argument("--base-steps", type=int, default=20, help="tiny base pretraining steps")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from qeforge.training.base_model import build_tiny_base

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = demo_dataset(args.n, 0, tmp / "data")
        base = build_tiny_base(texts, tmp / "base", steps=args.base_steps)
        print(f"{len(texts)} conversations from {args.n} demo lines; tiny base ({args.base_steps} steps) built")
        # Unpacked first: any warm-up cost (first-call kernels, page cache) falls on the baseline.
        res = {"unpacked": run_sft(base, tmp / "data", tmp / "unpacked", args.steps, False),
               "packed": run_sft(base, tmp / "data", tmp / "packed", args.steps, True)}
        tiny_cfg = AutoConfig.from_pretrained(base)

    print(f"\n{'mode':9} {'steps':>5} {'wall s':>7} {'non-pad':>8} {'positions':>9} {'share':>7} {'tokens/s':>9} {'pos/s':>7}")
    for mode, r in res.items():
        print(f"{mode:9} {r['steps']:5d} {r['wall']:7.1f} {r['real']:8d} {r['positions']:9d} "
              f"{r['share']:7.1%} {r['tps']:9.0f} {r['positions'] / r['wall']:7.0f}")
    p, u = res["packed"], res["unpacked"]
    ratio = p["tps"] / u["tps"]
    print(f"(trl's num_tokens for cross-check: packed {p['trl_tokens']}, unpacked {u['trl_tokens']})")
    print(f"packed/unpacked tokens/s: {ratio:.2f}x; non-pad tokens per step {p['real'] / p['steps']:.0f} "
          f"vs {u['real'] / u['steps']:.0f}")
    # tokens/s ratio = (share_p / share_u) x (pos/s_p / pos/s_u): removing padding can give at most
    # 1/share_u; the rest depends on what a position costs. Padding-free rows are one long sequence
    # per batch, and without a varlen kernel (flash-attn) sdpa computes attention over the whole
    # row with a block-diagonal mask: O(row^2) instead of O(sum of conversation^2).
    print(f"ceiling from padding alone: 1/{u['share']:.3f} = {1 / u['share']:.2f}x; cost per position "
          f"packed/unpacked: {(u['positions'] / u['wall']) / (p['positions'] / p['wall']):.2f}x")
    print(f"non-pad share packed {p['share']:.1%} >= 95%: {'PASS' if p['share'] >= 0.95 else 'FAIL'}")
    print(f"tokens/s ratio {ratio:.2f}x >= 2x: {'PASS' if ratio >= 2 else 'FAIL'}")

    # Tiny adapter: fp32 weights, so bytes ~ 4 * params + the safetensors header.
    tiny_formula = lora_params_formula(tiny_cfg.hidden_size, tiny_cfg.intermediate_size, tiny_cfg.num_hidden_layers,
                                       tiny_cfg.num_attention_heads, tiny_cfg.num_key_value_heads, 16)
    print(f"\ntiny adapter (r=16): adapter_model.safetensors {p['adapter_bytes']:,} B; trainable "
          f"{p['trainable']:,} params (formula {tiny_formula:,}, x4 B = {4 * tiny_formula:,} B)")

    formula, counted = phi4_adapter(16)
    mb_bf16, mb_fp32 = 2 * counted / 1e6, 4 * counted / 1e6
    print(f"phi-4 adapter (r=16, {', '.join(LORA_TARGETS)}; 40 layers): {counted:,} params "
          f"(peft on meta), formula {formula:,} {'==' if formula == counted else '!='}")
    # peft's default autocast_adapter_dtype keeps LoRA weights fp32 even on a bf16 base, so the
    # file written is the fp32 figure; the budget is checked against that, the larger one.
    print(f"  size: {mb_bf16:.1f} MB in bf16, {mb_fp32:.1f} MB in fp32; < 300 MB: "
          f"{'PASS' if mb_fp32 < 300 else 'FAIL'}")


if __name__ == "__main__":
    main()
