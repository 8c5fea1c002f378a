"""Generation speed on SmolLM2-135M-Instruct + a LoRA adapter, CPU: PyTorch vs ONNX Runtime.

In one run, on the same prompts (chat prompts of the curated test split, or built-in ones):
  1. PyTorch, one prompt at a time, base + adapter merged, greedy with a KV cache: the baseline;
  2. the evaluation's own path (qeforge.evaluation.generate: the gateway's lean decoder and batcher,
     adapter not merged) at batch 1 and at --batch;
  3. ONNX Runtime: the merged model exported with its KV cache (export_merged), parity-checked
     against PyTorch logits, greedy one prompt at a time (OnnxCausalLM.generate).
Every sequential run generates exactly --tokens tokens (no stop token), so tokens/s compare;
the batched path stops at <|im_end|> like evaluation does, and counts the tokens it produced.

    python -m bench.smol_generation [--prompts 16] [--tokens 64] [--batch 16] [--adapter DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FALLBACK_PROMPTS = [
    "Write pytest tests for:\n```python\ndef clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n```",
    "Is this test flaky? ```python\ndef test_t():\n    assert time.time() % 2 < 1\n```",
    "Review this diff:\n```diff\n+def total(v):\n+    sum = 0\n+    for x in v:\n+        sum += x\n+    return sum\n```",
    "Which lines are not covered?\n  1 | def sign(x):\n  2 |     if x < 0:\n  3 |         return -1\n  4 |     return 1",
]


def chat_prompts(n: int) -> list[list[dict]]:
    """n system+user prompts: the current curated test splits round-robin, else the fallback ones."""
    from datasets import load_from_disk

    from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS
    from qeforge.curation.export import load_manifest
    from qeforge.evaluation.generate import prompt_messages
    from qeforge.locations import default_locations

    root = Path(default_locations().datasets_dir)
    manifest = load_manifest(root)
    pools = []
    if manifest:
        pools = [[prompt_messages(m) for m in load_from_disk(str(root / manifest["version"] / c))["test"]["messages"]]
                 for c in CATEGORIES]
    else:
        pools = [[[{"role": "system", "content": SYSTEM_PROMPTS[c]}, {"role": "user", "content": p}]]
                 for c, p in zip(CATEGORIES, FALLBACK_PROMPTS)]
    return [pools[i % len(pools)][(i // len(pools)) % len(pools[i % len(pools)])] for i in range(n)]


def latest_smol_adapter() -> Path | None:
    from qeforge.locations import default_locations
    from qeforge.training.adapters import latest_adapters

    found = latest_adapters(default_locations().adapters_dir).get("test-generation")
    return Path(found["adapter_dir"]) if found and "SmolLM2" in str(found["base_model"]) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=4, help="prompts for the one-at-a-time runs")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--adapter", help="adapter dir (default: the last smol test-generation adapter, else random)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from bench.adapters import random_lora
    from bench.smol_training import smol_base
    from qeforge.evaluation.generate import generate, load_adapter_model
    from qeforge.serving.onnx_runtime import OnnxCausalLM, _load_merged, check_parity, export_merged
    from qeforge.training.lora_targets import LORA_TARGETS

    base = smol_base()
    tokenizer = AutoTokenizer.from_pretrained(base)
    convos = chat_prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = Path(args.adapter) if args.adapter else latest_smol_adapter()
        adapter = adapter or random_lora(base, tmp / "adapter", 0, targets=LORA_TARGETS["llama"], scale=0.01)
        print(f"base {base.name}, adapter {adapter}; {torch.get_num_threads()} torch threads")
        seq_ids = [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in convos[:args.sequential]]
        n_seq = args.sequential * args.tokens

        merged = _load_merged(str(base), adapter)
        started = time.perf_counter()
        torch_tokens = []
        with torch.inference_mode():
            for ids in seq_ids:
                out = merged.generate(torch.tensor([ids]), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                      do_sample=False, pad_token_id=tokenizer.pad_token_id)
                torch_tokens.append(out[0, len(ids):].tolist())
        torch_seq = n_seq / (time.perf_counter() - started)
        del merged

        model, tok = load_adapter_model(str(base), adapter)
        batched = {}
        for batch in (1, args.batch):
            started = time.perf_counter()
            gens = generate(model, tok, convos, max_new_tokens=args.tokens, batch_size=batch)
            batched[batch] = (sum(g.output_tokens for g in gens) / (time.perf_counter() - started),
                              sum(g.output_tokens for g in gens))
        del model

        started = time.perf_counter()
        onnx_dir = export_merged(str(base), adapter, tmp / "onnx")
        export_s = time.perf_counter() - started
        parity = check_parity(str(base), adapter, onnx_dir)
        lm = OnnxCausalLM(onnx_dir)
        started = time.perf_counter()
        onnx_tokens = [lm.generate(ids, max_new_tokens=args.tokens, stop_ids=[])[0] for ids in seq_ids]
        onnx_seq = n_seq / (time.perf_counter() - started)

    same = sum(a == b for a, b in zip(onnx_tokens, torch_tokens))
    print(f"ONNX export {export_s:.0f}s; parity max |logit diff| {parity['max_abs_diff']:.2e} "
          f"(atol {parity['atol']}), argmax agreement {parity['argmax_agreement']:.1%}: "
          f"{'PASS' if parity['passed'] else 'FAIL'}; greedy sequences identical to PyTorch: {same}/{len(seq_ids)}")
    print(f"\n{'path':48} {'tokens/s':>9} {'vs baseline':>11}")
    print(f"{'PyTorch merged, 1 prompt at a time (baseline)':48} {torch_seq:9.1f} {1.0:10.2f}x")
    for batch, (tps, n) in batched.items():
        label = f"evaluation generate() batch {batch} ({n} tokens)"
        print(f"{label:48} {tps:9.1f} {tps / torch_seq:10.2f}x")
    print(f"{'ONNX Runtime merged, 1 prompt at a time':48} {onnx_seq:9.1f} {onnx_seq / torch_seq:10.2f}x")


if __name__ == "__main__":
    main()
