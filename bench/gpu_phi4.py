"""Phi-4 on one GPU without its weights: LoRA training through sft.main, and multi-adapter generation.

The Hub is unreachable here, so microsoft/phi-4's weights cannot be loaded; its shape with random bf16
weights costs the same memory and time: Phi3ForCausalLM, 40 layers, hidden 5120, 40 query / 10 KV heads,
intermediate 17920, vocabulary 100352 (14.66B parameters, 29.3 GB), built directly on the GPU. Printed
as one JSON object:
  - train: the phi-4 test-generation recipe (LoRA r=16, alpha 32 on qkv_proj o_proj gate_up_proj
    down_proj, BFD-packed rows, bf16) through qeforge.training.sft.main, with and without activation
    checkpointing, and as 4-bit QLoRA (NF4 base) where bitsandbytes is installed: tokens/s, seconds
    per optimizer step, peak memory, MFU;
  - generate: four random r=16 adapters resident in serving's TorchBackend, fed by serving's Batcher at
    1, 4 and 16 concurrent rows (one adapter per row, round robin): output tokens/s, time to first
    token, seconds per decode step, peak memory, the adapters' resident bytes, MFU.
Chats are the demo trajectories', tokenized by a byte-level BPE trained on them (Phi-4's tokenizer is on
the Hub too): its ids all lie inside Phi-4's vocabulary, and the cost of a step does not depend on them.

    python -m bench.gpu_phi4 --config phi4 --out gpu_phi4.json   # one H200: README "Phi-4 on a GPU"
    python -m bench.gpu_phi4 --config tiny                       # the same code, tiny Phi-3 on the CPU (tests)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CATEGORY = "test-generation"  # its phi-4 recipe trains 4 x 2,048-token rows per forward
CONCURRENCY = (1, 4, 16)
# H200 SXM dense bf16, the datasheet's 989 TFLOP/s: the MFU denominator. An 8192^3 bf16 matmul measured
# 769-798 TFLOP/s on these machines (.library/device/KINDS.md), so about 0.8 is the practical ceiling.
PEAK_FLOPS = 989e12

SHAPES = {
    "phi4": {
        # microsoft/phi-4's config.json; sliding_window None as there (the batcher then joins running batches).
        "model": dict(vocab_size=100352, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                      num_attention_heads=40, num_key_value_heads=10, max_position_embeddings=16384,
                      rope_theta=250000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None),
        "device": "cuda", "dtype": "bfloat16",
        "demo_lines": 400,  # 240 chats, ~73k BPE tokens: 9 optimizer steps' worth
        "bpe_vocab": 4096,
        # 2 rows of 2,048 tokens per forward, in both modes. Without checkpointing a row keeps ~174k bf16
        # values per token per layer (the 17,920-wide MLP intermediates and their LoRA dropout copies,
        # q/k/v, norms): 2048 x 174k x 2 B = 0.7 GB per layer, 29 GB over 40 layers, so 2 rows + 29.3 GB
        # of weights + ~3 GB of logits is ~90 GB of the 141. The recipe's 4 rows fit only with
        # checkpointing, which keeps one 2048 x 5120 bf16 layer input (21 MB) per layer per row.
        # 2 rows x 2 accumulated x 2,048 = 8,192 tokens per optimizer step; step 1 is warm-up, untimed.
        "train": dict(max_length=2048, rows=2, accumulation=2, steps=6),
        "generate": dict(prompt=512, new=128),
    },
    "tiny": {
        # 0.17M parameters, the test bases' scale (tests/tiny_models.py), grouped KV heads like Phi-4's 40/10.
        "model": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, sliding_window=None),
        "device": "cpu", "dtype": "float32",  # CPU: bf16 matmuls are emulated
        "demo_lines": 100,
        "bpe_vocab": 512,
        # 512 tokens as the tiny recipe: shorter rows cut most chats before their assistant turn (no loss)
        "train": dict(max_length=512, rows=2, accumulation=2, steps=3),
        "generate": dict(prompt=16, new=8),
    },
}


# -- the model ---------------------------------------------------------------------------------------
def write_base_dir(shape: dict, work: Path) -> Path:
    """config.json + tokenizer: all sft.main and the serving source read by name. Returns the dir."""
    from transformers import Phi3Config

    from bench.training_packing import demo_dataset
    from qeforge.training.tokenizer import train_tokenizer

    texts = demo_dataset(shape["demo_lines"], 0, work / "data", n_val=2)
    tok = train_tokenizer(texts, vocab_size=shape["bpe_vocab"])
    assert len(tok) <= shape["model"]["vocab_size"], "every token id must be a row of the embedding"
    ids = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = work / "base"
    Phi3Config(**shape["model"], **ids).save_pretrained(base)
    tok.save_pretrained(base)
    return base


def build_model(shape: dict, base: Path):
    """Random weights, made straight on the device in the run's dtype: no 29 GB copy on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(shape["device"]):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=getattr(torch, shape["dtype"]))


def matmul_params(model) -> int:
    """Weights that multiply every token: the linear layers, lm_head included (14.15B of Phi-4's 14.66B;
    the 0.51B embedding is a lookup)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def quantize_4bit(model, model_args) -> None:
    """QLoRA's base in memory: every linear layer but lm_head becomes a bitsandbytes Linear4bit, quantized
    on its own device one layer at a time (from_pretrained quantizes only what it loads from files), with
    the recipe's settings as trl's get_quantization_config reads them: NF4, compute in the weights' dtype."""
    import bitsandbytes as bnb
    import torch

    four_bit = dict(quant_type=model_args.bnb_4bit_quant_type, compress_statistics=model_args.use_bnb_nested_quant)
    for parent in list(model.modules()):
        for name, linear in list(parent.named_children()):
            if isinstance(linear, torch.nn.Linear) and name != "lm_head":
                assert linear.bias is None, "Phi-3's linear layers have no bias"
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                      compute_dtype=linear.weight.dtype, device="meta", **four_bit)
                q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, **four_bit)
                setattr(parent, name, q.to(linear.weight.device))  # Params4bit quantizes on the move
    model.is_loaded_in_4bit = True  # what trl reads: it then keeps the LoRA weights in bf16, as QLoRA does


def mfu(flops: float, seconds: float) -> float:
    return flops / seconds / PEAK_FLOPS


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    """The GPU's allocated peak since the last free(); on the CPU the process's peak RSS (never reset)."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


# -- training ----------------------------------------------------------------------------------------
def step_clock(device: str):
    """A callback timing each optimizer step (the device synchronized at both ends) and counting the
    token positions its training forwards saw (packed rows are padding-free: every position is real)."""
    import torch
    from transformers import TrainerCallback

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps: list[tuple[float, int]] = []  # (seconds, positions) per optimizer step
            self._positions, self._t0, self._hook = 0, 0.0, None

        def _count(self, module, args, kwargs):
            if module.training:
                self._positions += kwargs["input_ids"].numel()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._positions, self._t0 = 0, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.steps.append((time.perf_counter() - self._t0, self._positions))

        def on_train_end(self, args, state, control, **kwargs):
            self._hook.remove()

    return StepClock()


def phi4_recipe(shape: dict, overrides: dict | None = None):
    """The recipe's (ScriptArguments, SFTConfig, ModelConfig); bf16 only where the shape runs in it."""
    from qeforge.training.recipes import recipe_path
    from qeforge.training.config import load_recipe

    bf16 = {"bf16": shape["dtype"] == "bfloat16"}
    return load_recipe(recipe_path("phi-4", CATEGORY), overrides={**bf16, **(overrides or {})})


def trained_modules(adapter_dir: Path) -> list[str]:
    """The module names holding LoRA weights in the saved adapter (…layers.0.self_attn.qkv_proj.lora_A…)."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        return sorted({k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in f.keys() if ".lora_A" in k})


def train(shape: dict, base: Path, work: Path, checkpointing: bool, four_bit: bool) -> dict:
    """A few optimizer steps of the phi-4 recipe through sft.main on the random-weight model."""
    from qeforge.training.sft import main

    t, device = shape["train"], shape["device"]
    mode = "qlora" if four_bit else "lora"
    out = work / f"adapter-{mode}-checkpointing-{checkpointing}"
    overrides = {
        "model_name_or_path": str(base), "dataset_path": str(work / "data"), "category": CATEGORY,
        "output_dir": str(out), "max_steps": t["steps"], "max_length": t["max_length"],
        "per_device_train_batch_size": t["rows"], "per_device_eval_batch_size": t["rows"],
        "gradient_accumulation_steps": t["accumulation"], "activation_checkpointing": checkpointing,
        "disable_tqdm": True,
        # The timed window is training steps only: no mid-run evaluation or checkpoints.
        "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False,
    }
    args = phi4_recipe(shape, overrides)
    model = build_model(shape, base)
    n_matmul = matmul_params(model)
    if four_bit:
        quantize_4bit(model, args[2])
    clock = step_clock(device)
    free(device)
    summary = main(*args, callbacks=[clock], model=model)
    timed = clock.steps[1:]  # step 1 pays cuBLAS/allocator warm-up
    seconds, tokens = sum(s for s, _ in timed), sum(n for _, n in timed)
    # Model FLOPs per trained token with a frozen base: forward 2N + backward 2N (gradients for the
    # activations only; frozen weights get none) = 4N, N = matmul params. Phi-4: 4 x 14.15B = 56.6
    # GFLOP/token, so 100% MFU = 989e12 / 56.6e9 = 17.5k tokens/s. Left out: the LoRA matmuls (r=16:
    # 6 x 55.7M, 0.6%), attention's QK^T and AV (12 x 40 layers x 5120 x 2048 = 5.0 GFLOP/token, +9%
    # at 2,048 positions), checkpointing's recomputed forward and QLoRA's dequantizing (hardware work,
    # not model FLOPs).
    return {
        "mode": mode, "activation_checkpointing": checkpointing,
        "rows_x_tokens": [t["rows"], t["max_length"]], "accumulation": t["accumulation"],
        "timed_steps": len(timed), "tokens_per_step": tokens / len(timed),
        "step_s": seconds / len(timed), "tokens_per_s": tokens / seconds,
        "peak_memory_gib": peak_memory_gib(device), "mfu": mfu(4 * n_matmul * tokens, seconds),
        "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
        "lora_modules": trained_modules(out), "lora_r": args[2].lora_r, "lora_alpha": args[2].lora_alpha,
        "train_loss": summary["train_loss"],
    }


# -- generation --------------------------------------------------------------------------------------
class Clocked:
    """A serving backend whose forwards are timed: (prefill?, start, end). Its logits come back to the
    CPU as numpy, so the end time is after the device finished."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.mixes_adapters, self.joins_running = backend.mixes_adapters, backend.joins_running

    def forward(self, categories, ids, mask, past):
        t0 = time.perf_counter()
        out = self.backend.forward(categories, ids, mask, past)
        self.calls.append((past is None, t0, time.perf_counter()))
        return out

    def select(self, past, rows):
        return self.backend.select(past, rows)

    def stack(self, a, b, pads):
        return self.backend.stack(a, b, pads)

    def crop_left(self, past, n):
        return self.backend.crop_left(past, n)


class TokenIds:
    """Random weights answer noise: an answer's text is its token ids."""

    @staticmethod
    def decode(tokens, skip_special_tokens=True) -> str:
        return " ".join(map(str, tokens))


@dataclass
class ServingState:
    """What the Batcher reads off a request's state (the engine's snapshot has the same four)."""
    backend: Clocked
    tokenizer: TokenIds
    stops: frozenset = frozenset()  # none: every row runs to its max_new, so the token count is exact
    pad_id: int = 0


def serve_once(batcher, state: ServingState, rows: int, prompt: int, new: int, vocab: int, device: str) -> dict:
    """`rows` requests at once, one adapter per row in turn, greedy, `new` tokens each."""
    import numpy as np

    from qeforge.categories import CATEGORIES
    from qeforge.serving.batching import GenerationRequest

    rng = np.random.default_rng(rows)
    prompts = [rng.integers(0, vocab, prompt).tolist() for _ in range(rows)]
    state.backend.calls.clear()
    free(device)
    t0 = time.perf_counter()
    with batcher.arriving():  # the batcher waits for all of them: one prefill of `rows` rows
        # Made here: a request's `submitted` (time to first token counts from it) is its creation.
        requests = [GenerationRequest(CATEGORIES[i % len(CATEGORIES)], ids, new, (), state)
                    for i, ids in enumerate(prompts)]
        for r in requests:
            batcher.submit(r)
    answers = [r.future.result(timeout=300) for r in requests]  # a stuck batch fails this part, not the run
    wall = time.perf_counter() - t0
    prefills = [(s, e) for first, s, e in state.backend.calls if first]
    # A row's first token is picked from the logits of the prefill that began after its `started`.
    ttft = [min(e for s, e in prefills if s >= r.started) - r.submitted for r in requests]
    steps = [e - s for first, s, e in state.backend.calls if not first]
    tokens = sum(len(a.tokens) for a in answers)
    return {"rows": rows, "prefills": len(prefills), "output_tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_s_mean": sum(ttft) / rows, "ttft_s_max": max(ttft),
            "decode_step_s": sum(steps) / max(1, len(steps)), "peak_memory_gib": peak_memory_gib(device)}


def generate(shape: dict, base: Path, work: Path) -> dict:
    """Four random adapters of the recipe's r and targets resident at once, the batcher at 1, 4 and 16 rows."""
    from bench.adapters import random_lora_on
    from qeforge.categories import CATEGORIES
    from qeforge.serving.backends import TorchBackend
    from qeforge.serving.batching import Batcher
    from qeforge.serving.source import DirectorySource

    device, g = shape["device"], shape["generate"]
    lora = phi4_recipe(shape)[2]
    model = build_model(shape, base)
    n_matmul = matmul_params(model)
    for seed, category in enumerate(CATEGORIES):
        random_lora_on(model, work / "adapters" / category, seed, targets=lora.lora_target_modules, r=lora.lora_r,
                       scale=0.01)
    snapshot = DirectorySource(str(base), {c: work / "adapters" / c for c in CATEGORIES}).load()
    backend = TorchBackend.from_snapshot(snapshot, base=model)
    resident = sum(p.numel() * p.element_size() for n, p in backend.model.named_parameters() if "lora_" in n)
    state = ServingState(Clocked(backend), TokenIds())
    batcher = Batcher(max_batch=max(CONCURRENCY))
    vocab = shape["model"]["vocab_size"]
    serve_once(batcher, state, 1, g["prompt"], 4, vocab, device)  # warm-up: kernels, allocator
    runs = [serve_once(batcher, state, rows, g["prompt"], g["new"], vocab, device) for rows in CONCURRENCY]
    for run in runs:
        # Model FLOPs of generation: forward only, 2N per position (prompt + generated), N = matmul params;
        # attention over <= 640 positions (4 x 40 x 5120 x 640 = 0.5 GFLOP vs 28.3) is left out.
        run["mfu"] = mfu(2 * n_matmul * run["rows"] * (g["prompt"] + g["new"]), run["wall_s"])
    return {"adapters": len(CATEGORIES), "adapters_resident_gib": resident / 2**30, "generation_path": backend.path,
            "prompt_tokens": g["prompt"], "new_tokens": g["new"], "concurrency": runs}


# -- the run -----------------------------------------------------------------------------------------
def versions() -> dict:
    import torch

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "pyarrow", "bitsandbytes"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return found


def section(device: str, fn, *args) -> dict:
    """One part's figures; an error (say out of memory without checkpointing) costs that part only.
    Each part is also logged as it ends, so a run cut off by its time limit keeps what it finished."""
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 - a one-shot device run reports every part it can
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"[:500]}
    free(device)
    print(f"{fn.__name__} {args[3:]}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def run(config: str) -> dict:
    shape = SHAPES[config]
    device = shape["device"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = write_base_dir(shape, work)
        result = {
            "config": config, "versions": versions(), "peak_tflops": PEAK_FLOPS / 1e12,
            "memory": "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS",
            "train": [section(device, train, shape, base, work, ckpt, False) for ckpt in (True, False)]
            + [section(device, train, shape, base, work, True, True) if importlib.util.find_spec("bitsandbytes")
               else {"mode": "qlora", "activation_checkpointing": True,
                     "skipped": "bitsandbytes is not installed (bench/gpu_wheels.sh fetches it)"}],
            "generate": section(device, generate, shape, base, work),
        }
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=sorted(SHAPES), default="phi4")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: stdout holds the JSON alone
        text = json.dumps(run(args.config), indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
