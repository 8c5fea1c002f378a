"""The lean decoder on SmolLM2-135M-Instruct: greedy agreement with transformers, and evaluation's speed.

In one run, on 2 cores, four random r=16 LoRA adapters on the seven llama modules (bench/adapters.py):
  1. agreement: --prompts chat prompts (bench/serving.py's snippets under each category's system
     prompt, round-robin over the four adapters), --tokens new tokens, greedy. The reference is
     transformers' generate() on the PeftModel, one prompt at a time with its adapter set; the lean
     path is the shim's Batcher over the lean decoder, all prompts mixed in batches of --batch. Each
     answer that differs is shown with where it first differs and the reference's top-2 logit margin
     there (a near-tie that float reassociation can flip, or a real difference).
  1b. the same for the lean path on weight-only int8 weights (backend "torch-int8"), and how far its
     routing signal (an answer's mean token logprob) moves from the fp32 lean path's on the same answers.
  1c. one decode step in-process, median over 24 steps after a 60-token prefill, at 1 row (one
     adapter), 4 and 16 rows (the four adapters mixed), fp32 then int8: decoder.py's Python step,
     decode_step.cpp op by op (oneDNN or torch's int8 GEMM between its loops), and what the gateway
     runs (one row: decode_step.cpp's parallel region on its own GEMV), taking turns in 3 rounds.
  2. evaluation's generation stage: the same prompts through evaluation.generate with one adapter
     (the lean path, continuous batching at --batch, evaluation's default) beside what it ran before
     this change: transformers' generate() on left-padded static batches of --before-batch (the old
     default) with the adapter active.

    python -m bench.lean_decoder [--prompts 32] [--tokens 32] [--batch 16] [--before-batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def conversations(n: int) -> list[tuple[str, list[dict]]]:
    from bench.serving import SNIPPETS
    from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS

    return [(c := CATEGORIES[i % len(CATEGORIES)],
             [{"role": "system", "content": SYSTEM_PROMPTS[c]},
              {"role": "user", "content": SNIPPETS[i % len(SNIPPETS)] + ("\n" + "# why?" * (i // len(SNIPPETS)))}])
            for i in range(n)]


def reference(model, tokenizer, category: str, ids: list[int], tokens: int, stops: list[int]):
    """(new tokens, first-step-onward scores) from transformers' generate() with this adapter set."""
    import torch

    model.set_adapter(category)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(ids):].tolist(), [s[0] for s in out.scores]


def old_evaluation_generate(model, tokenizer, convos: list[list[dict]], tokens: int, batch: int, stops: list[int]) -> int:
    """Evaluation's generation before the lean decoder: generate() on left-padded static batches; tokens made."""
    import torch

    from qeforge.signals import answer_length

    prompts = sorted((tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
                      for c in convos), key=len)
    made = 0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            enc = tokenizer.pad({"input_ids": prompts[start:start + batch]}, return_tensors="pt", padding_side="left")
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
            made += sum(answer_length(row, stops) for row in out.sequences[:, enc["input_ids"].shape[1]:].tolist())
    return made


def agreement(convos, requests, expected) -> dict:
    """How many answers equal the reference's; for each that does not, where it first differs and the
    reference's top-2 logit margin there (a near-tie that reassociation or quantization can flip)."""
    differing = []
    for (c, _), r, (want, scores) in zip(convos, requests, expected):
        got = r.future.result().tokens
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            top2 = scores[at].topk(2).values.tolist() if at < len(scores) else [0.0, 0.0]
            differing.append({"adapter": c, "first_difference_at": at, "reference_top2_margin": round(top2[0] - top2[1], 4)})
    return {"identical": len(requests) - len(differing), "of": len(requests), "differing": differing}


def step_times(backend, adapters: list[str], rounds: int = 3, steps: int = 24) -> dict:
    """{rows: {variant: median ms a step}} (1c above), the best of `rounds` rounds taken in turn."""
    decoder = backend.decoder
    compiled = decoder.step

    def median_step(rows: int) -> float:
        row_adapters = [adapters[i % len(adapters)] for i in range(rows)]
        ids = np.random.default_rng(0).integers(0, 49152, (rows, 60))
        mask = np.ones_like(ids)
        logits, cache = backend.forward(row_adapters, ids, mask, None)
        times = []
        for _ in range(steps):
            mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], 1)
            started = time.perf_counter()
            logits, cache = backend.forward(row_adapters, logits.argmax(-1)[:, None], mask, cache)
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1e3

    variants = {"python": (None, True)}
    if compiled is not None:  # without a C++ compiler only the Python step exists
        variants |= {"cpp_op_by_op": (compiled, False), "gateway": (compiled, True)}
    out = {rows: {name: [] for name in variants} for rows in (1, 4, 16)}
    try:
        for _ in range(rounds):
            for rows in out:
                for name, (step, region) in variants.items():
                    if rows > 1 and name == "cpp_op_by_op":
                        continue  # the same path as "gateway" beyond one row
                    decoder.step = step
                    if step is not None:
                        step.one_row_region = region
                    out[rows][name].append(median_step(rows))
    finally:
        decoder.step = compiled
        if compiled is not None:
            compiled.one_row_region = True
    return {f"rows_{rows}": {name: round(min(ms), 2) for name, ms in times.items() if ms} for rows, times in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="rows at a time: the lean path, and evaluation's setting")
    parser.add_argument("--before-batch", type=int, default=8, help="static batch of the old evaluation path")
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.serving import random_adapters
    from bench.smol_training import smol_base
    from qeforge.evaluation.generate import _Decoding, generate, stop_token_ids
    from qeforge.serving.backends import TorchBackend, with_adapters
    from qeforge.serving.batching import Batcher, GenerationRequest
    from qeforge.training.lora_targets import LORA_TARGETS

    base = str(smol_base())
    tokenizer = AutoTokenizer.from_pretrained(base)
    stops = stop_token_ids(tokenizer)
    convos = conversations(args.prompts)
    report = {"prompts": args.prompts, "tokens": args.tokens, "batch": args.batch, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = random_adapters(base, Path(tmp), LORA_TARGETS["llama"], 0.01)
        model = with_adapters(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapters)
        ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False) for _, m in convos]

        started = time.perf_counter()
        expected = [reference(model, tokenizer, c, p, args.tokens, stops) for (c, _), p in zip(convos, ids)]
        reference_s = time.perf_counter() - started

        backend = TorchBackend(model, list(adapters))  # regroups the model's weights in place (values unchanged)
        state = _Decoding(backend, tokenizer, tuple(stops), tokenizer.pad_token_id)
        requests = [GenerationRequest(c, p, args.tokens, (), state) for (c, _), p in zip(convos, ids)]
        started = time.perf_counter()
        Batcher(max_batch=args.batch, thread=False).run(requests)
        lean_s = time.perf_counter() - started
        report["agreement"] = {**agreement(convos, requests, expected), "path": backend.path,
                               "reference_one_at_a_time_s": round(reference_s, 1), "lean_mixed_batches_s": round(lean_s, 1)}
        print(json.dumps(report["agreement"]), flush=True)
        report["step_ms_fp32"] = step_times(backend, list(adapters))
        print(json.dumps(report["step_ms_fp32"]), flush=True)

        backend.decoder.quantize_int8()
        quantized = [GenerationRequest(c, p, args.tokens, (), state) for (c, _), p in zip(convos, ids)]
        started = time.perf_counter()
        Batcher(max_batch=args.batch, thread=False).run(quantized)
        int8_s = time.perf_counter() - started
        same = [(a.future.result(), b.future.result()) for a, b in zip(requests, quantized)]
        same = [abs(a.mean_logprob - b.mean_logprob) for a, b in same if a.tokens == b.tokens]
        report["int8_agreement"] = {**agreement(convos, quantized, expected), "lean_mixed_batches_s": round(int8_s, 1),
                                    "signal_shift_on_identical_answers": {
                                        "n": len(same), "mean_abs": round(float(np.mean(same)), 4) if same else None,
                                        "max_abs": round(float(np.max(same)), 4) if same else None}}
        print(json.dumps(report["int8_agreement"]), flush=True)
        report["step_ms_int8"] = step_times(backend, list(adapters))
        print(json.dumps(report["step_ms_int8"]), flush=True)

        one = next(iter(adapters))
        single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                           str(adapters[one])).eval()
        messages = [m for _, m in convos]
        started = time.perf_counter()
        old_tokens = old_evaluation_generate(single, tokenizer, messages, args.tokens, args.before_batch, stops)
        old_s = time.perf_counter() - started
        started = time.perf_counter()
        new_tokens = sum(g.output_tokens for g in generate(single, tokenizer, messages, max_new_tokens=args.tokens,
                                                           batch_size=args.batch))
        new_s = time.perf_counter() - started
        report["evaluation_generation"] = {
            "before_transformers_generate": {"batch": args.before_batch, "s": round(old_s, 1), "tokens": old_tokens, "tokens_per_s": round(old_tokens / old_s, 1)},
            "after_lean": {"batch": args.batch, "s": round(new_s, 1), "tokens": new_tokens, "tokens_per_s": round(new_tokens / new_s, 1)},
            "speedup_x": round((new_tokens / new_s) / (old_tokens / old_s), 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
