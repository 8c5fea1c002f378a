"""CPU serving of base + one merged LoRA adapter through ONNX Runtime.

For small/CPU deployments (the embedded tiny Phi-3, a laptop, a CI box): one ONNX graph per
(base, adapter), no PyTorch at serving time. Production Phi-4 serving belongs on vLLM, which
loads the PEFT dirs directly and batches many adapters on one base; exporting phi-4 this way
needs ~56 GB of RAM (14B float32 weights) and one 56 GB graph per adapter.

The graph carries a KV cache: inputs `input_ids[batch, seq]`, `attention_mask[batch, past+seq]`,
`past_key_values.{i}.key|value[batch, kv_heads, past, head_dim]`; outputs `logits[batch, seq,
vocab]` and `present.{i}.key|value[batch, kv_heads, past+seq, head_dim]`. A plain logits-only
forward is the same graph fed zero-length pasts (OnnxCausalLM.forward does that), so a decode
step costs O(prefix) instead of re-running the whole prefix (O(n^2) over a generation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qeforge.hashing import file_sha256

MODEL_FILE = "model.onnx"
EXPORT_INFO = "export_info.json"
DEFAULT_PROMPTS = [
    "def add(a, b):",
    "Write pytest tests for a function that parses ISO dates and rejects invalid ones.",
    "<|user|>\nWhy is this test flaky?<|end|>\n<|assistant|>\n",
]


def _load_merged(base_name_or_path: str, adapter_dir: str | Path):
    """Base + adapter folded into plain Linear weights: the graph then has no LoRA branches."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_name_or_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def _position_ids(attention_mask):
    """Left padding shifts real tokens right; like transformers' generate, count positions
    over real tokens only (pads get 0, they are masked anyway). Works for numpy and torch."""
    return (attention_mask.cumsum(-1) - 1).clip(0, None)


def export_merged(
    base_name_or_path: str, adapter_dir: str | Path, out_dir: str | Path, *, opset: int | None = None
) -> Path:
    """Export base+adapter (merged, float32) to out_dir/model.onnx with tokenizer files and
    export_info.json; returns out_dir. Skips when export_info.json already records the same
    base, adapter hash (and opset, if one is asked for)."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    adapter_sha = file_sha256(Path(adapter_dir) / "adapter_model.safetensors")
    if _already_exported(out, str(base_name_or_path), adapter_sha, opset):
        return out
    program = _onnx_program(_load_merged(base_name_or_path, adapter_dir), opset)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_INFO).unlink(missing_ok=True)  # written last: a crash mid-export means "not exported"
    program.save(str(out / MODEL_FILE))  # weights go to external data on their own past 2 GB (protobuf limit)
    AutoTokenizer.from_pretrained(base_name_or_path).save_pretrained(out)
    info = _export_info(str(base_name_or_path), adapter_dir, adapter_sha, out)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=1))
    return out


def _already_exported(out: Path, base: str, adapter_sha: str, opset: int | None) -> bool:
    if not ((out / EXPORT_INFO).exists() and (out / MODEL_FILE).exists()):
        return False
    info = json.loads((out / EXPORT_INFO).read_text())
    return (info.get("base"), info.get("adapter_sha256")) == (base, adapter_sha) and (
        opset is None or info.get("opset") == opset)


def _with_flat_cache(model):
    """The model with flat tensors in and out (logits, then each layer's key and value): ONNX has no
    notion of a Cache object."""
    import torch
    from transformers import DynamicCache

    n_layers = model.config.num_hidden_layers

    class WithCache(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)])
            pos = _position_ids(attention_mask)[:, -input_ids.shape[1]:]
            o = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                        past_key_values=cache, use_cache=True)
            present = (t for layer in o.past_key_values.layers for t in (layer.keys, layer.values))
            return (o.logits, *present)

    return WithCache(model).eval()


def _onnx_program(model, opset: int | None):
    """torch.onnx's dynamo export of the flat-cache model, batch and lengths dynamic."""
    import torch

    n_layers = model.config.num_hidden_layers
    n_kv = model.config.num_key_value_heads
    head_dim = (getattr(model.config, "head_dim", None)
                or model.config.hidden_size // model.config.num_attention_heads)
    # Sample sizes all distinct and >= 2 (batch 2, past 3, seq 5): torch.export specialises
    # dims of size 0/1 and would tie equal-sized ones together.
    batch, past_len, seq = 2, 3, 5
    args = (torch.ones(batch, seq, dtype=torch.long), torch.ones(batch, past_len + seq, dtype=torch.long),
            *(torch.zeros(batch, n_kv, past_len, head_dim) for _ in range(2 * n_layers)))
    dyn = torch.export.Dim.DYNAMIC
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    # Exporter: dynamo (torch.export + onnxscript), which worked first time, cache included. The
    # legacy TorchScript tracer (deprecated) also exported the logits-only forward with the same
    # parity, but warned that it froze Python-side shape checks in transformers' mask and sdpa
    # code into constants: right for the traced shapes, silently wrong for others. torch.export
    # keeps those shapes symbolic.
    return torch.onnx.export(
        _with_flat_cache(model),
        args,
        dynamo=True,
        opset_version=opset,
        input_names=["input_ids", "attention_mask", *past_names],
        output_names=["logits", *(n.replace("past_key_values", "present") for n in past_names)],
        # Dim.DYNAMIC rather than named Dims: attention_mask's length is past+seq, which named
        # Dims cannot express (Dim + Dim is unsupported); torch.export infers that relation.
        dynamic_shapes={"input_ids": {0: dyn, 1: dyn}, "attention_mask": {0: dyn, 1: dyn},
                        "past": tuple({0: dyn, 2: dyn} for _ in past_names)},
        verbose=False,
    )


def _export_info(base: str, adapter_dir: str | Path, adapter_sha: str, out: Path) -> dict:
    import onnx
    import onnxscript
    import peft
    import torch
    import transformers

    return {
        "base": base,
        "adapter_dir": str(adapter_dir),
        "adapter_sha256": adapter_sha,
        "opset": next(o.version for o in onnx.load(out / MODEL_FILE, load_external_data=False).opset_import
                      if o.domain in ("", "ai.onnx")),
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
    }


class OnnxCausalLM:
    """An exported dir (export_merged) on an ONNX Runtime CPU session."""

    def __init__(self, onnx_dir: str | Path, *, intra_op_threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(Path(onnx_dir) / MODEL_FILE), opts,
                                            providers=["CPUExecutionProvider"])
        self._past = [(i.name, i.shape) for i in self.session.get_inputs()
                      if i.name.startswith("past_key_values.")]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                past: list[np.ndarray] | None = None):
        """(logits[batch, seq, vocab], present) for int64 inputs; past=None starts from an empty cache."""
        if past is None:
            # [batch, kv_heads, 0, head_dim]: heads and head_dim are static in the graph.
            past = [np.zeros((len(input_ids), shape[1], 0, shape[3]), np.float32)
                    for _, shape in self._past]
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        feeds.update((name, p) for (name, _), p in zip(self._past, past))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def generate(
        self, input_ids: list[int], *, max_new_tokens: int, stop_ids: Sequence[int]
    ) -> tuple[list[int], list[float]]:
        """Greedy decoding; the generated ids (ending with the stop token if one was hit) and each
        one's log-prob (log_softmax of that step's logits, computed in float64)."""
        if not input_ids:
            raise ValueError("generate needs at least one prompt token")
        stop = set(stop_ids)
        ids = np.asarray([input_ids], np.int64)
        mask = np.ones_like(ids)
        past = None
        tokens: list[int] = []
        logprobs: list[float] = []
        for _ in range(max_new_tokens):
            logits, past = self.forward(ids, mask, past)
            step = logits[0, -1].astype(np.float64)
            token = int(step.argmax())
            top = step.max()
            logprobs.append(float(step[token] - top - np.log(np.exp(step - top).sum())))
            tokens.append(token)
            if token in stop:
                break
            # Next step feeds only the new token; the mask covers cache + that token.
            ids = np.asarray([[token]], np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
        return tokens, logprobs


def check_parity(
    base_name_or_path: str,
    adapter_dir: str | Path,
    onnx_dir: str | Path,
    *,
    prompts: list[str] | None = None,
    atol: float = 1e-3,
) -> dict:
    """Compare PyTorch (base + adapter merged) and ONNX logits; never raises on mismatch.

    Batches: each prompt alone, then the first two left-padded together. Each batch is run on
    ONNX twice, in one pass and split in two (prefix, then the rest on the prefix's cache), so the
    KV-cache path is checked too. Only real-token positions count (padded rows are undefined).
    max_rel_diff is max_abs_diff over the largest |logit|, since an element-wise ratio blows up on
    logits near zero. passed: max_abs_diff <= atol.
    """
    import torch
    from transformers import AutoTokenizer

    prompts = prompts or DEFAULT_PROMPTS
    tok = AutoTokenizer.from_pretrained(str(onnx_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = _load_merged(base_name_or_path, adapter_dir)
    session = OnnxCausalLM(onnx_dir)

    batches = [[p] for p in prompts] + ([prompts[:2]] if len(prompts) > 1 else [])
    diffs: list[float] = []
    scale = 0.0
    agree = total = 0
    for batch in batches:
        enc = tok(batch, return_tensors="np", padding=True)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        with torch.inference_mode():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(_position_ids(mask))).logits.numpy()
        whole, _ = session.forward(ids, mask)
        runs = [whole]
        if ids.shape[1] >= 2:
            k = ids.shape[1] // 2
            head, past = session.forward(ids[:, :k], mask[:, :k])
            rest, _ = session.forward(ids[:, k:], mask, past)
            runs.append(np.concatenate([head, rest], axis=1))
        real = mask.astype(bool)
        for got in runs:
            diffs.append(np.abs(got - ref)[real].max())
            agree += int((got.argmax(-1) == ref.argmax(-1))[real].sum())
            total += int(real.sum())
        scale = max(scale, float(np.abs(ref[real]).max()))
    abs_diff = float(np.max(diffs))  # np.max, not max(): a NaN must surface, not be skipped
    return {
        "max_abs_diff": abs_diff,
        "max_rel_diff": abs_diff / scale if scale else abs_diff,
        "argmax_agreement": agree / total,
        "passed": bool(abs_diff <= atol),
        "atol": atol,
    }
