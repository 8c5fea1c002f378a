"""Greedy generation for evaluation, with the confidence signal the router can compute while answering.

One base model is loaded once; the adapter is switched off (peft's `disable_adapter`) to score
the base model on the same prompts, so adapter-vs-base differs by the adapter only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qeforge import signals

# Chat-turn terminators of the Phi-3 (<|end|>) and Phi-4 (<|im_end|>) templates.
STOP_TOKENS = ("<|end|>", "<|im_end|>")


@dataclass(frozen=True)
class Generation:
    text: str
    mean_logprob: float  # mean log-probability of the generated tokens: the adapter's own confidence
    prompt_tokens: int
    output_tokens: int


def load_adapter_model(base_name_or_path: str, adapter_dir: str | Path, *, dtype: str = "auto"):
    """(model, tokenizer): the base with the adapter attached (not merged, so it can be disabled)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_name_or_path)
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left so every row ends at its prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    base = AutoModelForCausalLM.from_pretrained(base_name_or_path, dtype=torch_dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model, tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in STOP_TOKENS if t in vocab]
    return sorted({i for i in ids if i is not None})


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to the answer: system and user turns, the recorded assistant turn dropped."""
    return [m for m in messages if m["role"] != "assistant"]


def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    use_adapter: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[Generation]:
    """Greedy answers for chat prompts (each a list of system/user messages), in order."""
    import contextlib

    import torch

    limit = getattr(model.config, "max_position_embeddings", None) or 4096
    max_prompt = limit - max_new_tokens  # keep the end of long prompts: the question is last
    stops = stop_token_ids(tokenizer)
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)[-max_prompt:]
               for c in conversations]
    # Batches of similar prompt lengths: a left-padded batch computes every row at its longest
    # prompt's length, so sorting cuts the padding (coverage prompts run 200-600 SmolLM2 tokens).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Generation] = {}
    started = time.perf_counter()
    adapter_off = contextlib.nullcontext() if use_adapter else model.disable_adapter()
    with adapter_off, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids = [prompts[i] for i in rows]
            # Left padding: every row's prompt ends at the same position, where generation starts;
            # generate() keeps a KV cache (use_cache defaults on), so a step costs one token per row.
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True, padding_side="left")
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            # scores[step]: that step's logits for every row; the signal is computed as the shim computes it.
            logprobs = np.stack([signals.token_logprobs(s.float().numpy(), t) for s, t in zip(out.scores, new.T.numpy())], 1)
            for i, row, lp, prompt_ids in zip(rows, new.tolist(), logprobs, ids):
                n = signals.answer_length(row, stops)  # the rest of the row is padding
                text = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                results[i] = Generation(text, signals.mean_logprob(lp[:n]), len(prompt_ids), n)
            if progress:
                progress(len(results), len(conversations), time.perf_counter() - started)
    return [results[i] for i in range(len(prompts))]
