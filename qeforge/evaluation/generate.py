"""Greedy generation for evaluation, with the confidence signal the router can compute while answering.

One base model is loaded once; the base is scored on the same prompts with the adapter left out of
every row, so adapter-vs-base differs by the adapter only. Generation runs on the shim's path
(serving.backends + serving.batching), so evaluation measures the answers and signal it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path



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


@dataclass(frozen=True)
class _Decoding:
    """What batching.GenerationRequest.state carries: the model and how its answers end."""

    backend: object
    tokenizer: object
    stops: tuple[int, ...]
    pad_id: int


def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    weights: str = "model",
    use_adapter: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[Generation]:
    """Greedy answers for chat prompts (each a list of system/user messages), in order: the shim's own
    generation path (its backend and its continuous batching, up to `batch_size` rows, on `weights`:
    backends.WEIGHTS), so the answers and the routing signal are the ones the shim would produce."""
    from qeforge.serving.backends import TorchBackend
    from qeforge.serving.batching import Batcher, GenerationRequest

    limit = getattr(model.config, "max_position_embeddings", None) or 4096
    max_prompt = limit - max_new_tokens  # keep the end of long prompts: the question is last
    adapter = next(iter(model.peft_config))  # load_adapter_model's one adapter
    stops = tuple(stop_token_ids(tokenizer))
    state = _Decoding(TorchBackend(model, [adapter], weights), tokenizer, stops,
                      tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)[-max_prompt:]
               for c in conversations]
    requests = [GenerationRequest(adapter if use_adapter else None, list(ids), max_new_tokens, (), state)
                for ids in prompts]
    started, done = time.perf_counter(), [0]

    def answered(_):
        done[0] += 1
        if progress and (done[0] % batch_size == 0 or done[0] == len(requests)):
            progress(done[0], len(requests), time.perf_counter() - started)

    for r in requests:
        r.future.add_done_callback(answered)
    # Shortest first: rows that join a running batch are padded to its length, so similar lengths
    # cut the padding (coverage prompts run 200-600 SmolLM2 tokens).
    Batcher(max_batch=batch_size, thread=False).run(sorted(requests, key=lambda r: len(r.ids)))
    out = []
    for r, ids in zip(requests, prompts):
        answer = r.future.result()
        out.append(Generation(answer.text, answer.mean_logprob, len(ids), len(answer.tokens)))
    return out
