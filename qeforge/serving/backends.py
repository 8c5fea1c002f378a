"""The models a snapshot's batches run on: one forward per step for every row (see batching.py).

TorchBackend: the base once, every adapter resident in one PeftModel; each row of a batch picks its
adapter, so one batch mixes categories. Steps run on the lean decoder (decoder.py: every adapter in
one matmul, checked against transformers + peft's forward when loaded), or, for a model it does not
know or one whose logits differ, on that forward itself (`path` says which, and why; on the CPU it
also says when the lean decoder's one-token steps run in Python because its C++ step,
decode_step.cpp, is not there). With weights="int8" the lean decoder's linears run weight-only int8
(decoder.py), path "lean-int8"; a model the lean decoder cannot run is then an error, not a silent
fp32 fallback. OnnxBackend: one merged (base + adapter) graph per category, so a batch holds one
category; each graph is checked against PyTorch when it is loaded, and a graph that fails is refused
(`refused`: category -> why), not served.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from qeforge.serving.decoder import LeanDecoder, unsupported
from qeforge.serving.source import Snapshot

log = logging.getLogger(__name__)

WEIGHTS = ("model", "int8")
BACKENDS = ("torch", "torch-int8", "onnx")  # the gateway's choices: TorchBackend's weights, or OnnxBackend


def generation_weights(backend: str) -> str:
    """The weights a gateway backend generates with (WEIGHTS); ONNX Runtime's graphs are the model's own."""
    return "int8" if backend == "torch-int8" else "model"


def _context(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 4096)


class TorchBackend:
    mixes_adapters = True

    def __init__(self, model, adapters: list[str], weights: str = "model"):
        """`model`: a PeftModel holding `adapters` (rows name one of them, or None for the base alone);
        `weights`: "model" (its own dtype) or "int8" (weight-only, the lean decoder on the CPU)."""
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
        self.model = model.eval()
        self.device = next(model.parameters()).device  # batches arrive as numpy on the CPU
        self.context = _context(model.config)
        self.refused: dict[str, str] = {}
        self.decoder, self.path = lean_or_reason(model, adapters)
        if weights == "int8":
            if self.decoder is None:
                raise ValueError(f"int8 weights run on the lean decoder, which is not used here: {self.path}")
            self.decoder.quantize_int8()
            self.path = "lean-int8"
            drift = lean_parity(model, self.decoder, adapters)
            log.info("int8 weights against the model's own: max |logit diff| %.3g, argmax agreement %.0f%% "
                     "(lean_parity's prompts)", drift["max_abs_diff"], 100 * drift["argmax_agreement"])
        if self.decoder is not None and self.decoder.step is None and self.device.type == "cpu":  # /health shows it
            self.path += f" (one-token steps in Python: {self.decoder.step_reason})"
        # A sliding-window cache keeps only the last window's positions, so padding one to stack it
        # under another would not line up: those models wait for the running batch to end instead.
        self.joins_running = getattr(model.config, "sliding_window", None) is None

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, base=None, weights: str = "model") -> TorchBackend:
        """`base`: the base model already in memory (bench.gpu_phi4's random-weight Phi-4), else
        snapshot.base_model is loaded. The adapters are loaded onto the base's device."""
        from transformers import AutoModelForCausalLM

        model = base if base is not None else AutoModelForCausalLM.from_pretrained(snapshot.base_model, dtype="auto")
        return cls(with_adapters(model, {c: a.path for c, a in snapshot.adapters.items()}), list(snapshot.adapters), weights)

    def forward(self, categories: list[str | None], ids: np.ndarray, mask: np.ndarray, past):
        """Rows whose category is None run on the base alone."""
        if self.decoder is not None:
            return self.decoder.forward(categories, ids, mask, past)
        return peft_forward(self.model, categories, ids, mask, past)

    def select(self, past, rows: list[int]):
        import torch

        if self.decoder is not None:
            return past.select(rows)
        past.batch_select_indices(torch.tensor(rows, device=self.device))
        return past

    def stack(self, a, b, pads: list[int]):
        import torch

        if self.decoder is not None:
            return a.stack(b, pads)
        for la, lb in zip(a.layers, b.layers):
            la.keys, la.values = (torch.cat([torch.nn.functional.pad(x, (0, 0, pads[0], 0)),
                                             torch.nn.functional.pad(y, (0, 0, pads[1], 0))])
                                  for x, y in ((la.keys, lb.keys), (la.values, lb.values)))
        return a

    def crop_left(self, past, n: int):
        if self.decoder is not None:
            return past.crop_left(n)
        for layer in past.layers:
            layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]
        return past


def with_adapters(model, adapters: dict):
    """A PeftModel holding every adapter ({name: PEFT dir}) on `model`, each under its name."""
    from peft import PeftModel

    for name, path in adapters.items():
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    return model.eval()


def peft_forward(model, adapters: list[str | None], ids: np.ndarray, mask: np.ndarray, past):
    """The reference step: transformers' forward with peft choosing each row's adapter (None: the base)."""
    import torch
    from peft import PeftModel

    device = next(model.parameters()).device
    mask_t = torch.from_numpy(mask).to(device)
    # Left padding shifts real tokens right: positions count real tokens only, as generate() does.
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
    extra = {"adapter_names": [a if a is not None else "__base__" for a in adapters]} if isinstance(model, PeftModel) else {}
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(device), attention_mask=mask_t,
                    position_ids=positions, past_key_values=past, use_cache=True, logits_to_keep=1, **extra)
    return out.logits[:, -1].float().cpu().numpy(), out.past_key_values


def lean_parity(model, decoder: LeanDecoder, adapters: list[str]) -> dict:
    """Last-position logits of the lean decoder vs peft_forward: a left-padded prefill of one row per
    adapter and one on the base alone (prompts of different lengths), then three decode steps; then the
    same for one row alone (its steps take another path: decode_step.cpp's one-row parallel region)."""
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    worst, agree, total = 0.0, 0, 0
    for rows in ([*adapters, None], [adapters[0] if adapters else None]):
        lengths = [5 + 3 * i for i in range(len(rows))]
        width = max(lengths)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, n in enumerate(lengths):
            ids[i, width - n:], mask[i, width - n:] = rng.integers(0, vocab, n), 1
        caches = [None, None]
        for _ in range(4):
            (ref, caches[0]), (got, caches[1]) = (peft_forward(model, rows, ids, mask, caches[0]),
                                                  decoder.forward(rows, ids, mask, caches[1]))
            worst = max(worst, float(np.abs(ref - got).max()))
            agree, total = agree + int((ref.argmax(-1) == got.argmax(-1)).sum()), total + len(rows)
            ids = ref.argmax(-1)[:, None]
            mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], 1)
    # fp32 sums in another order differ by ~1e-5 of the logits' scale; bf16 (GPU) by ~1e-2.
    atol = 1e-3 if decoder.dtype.itemsize >= 4 else 0.25
    return {"max_abs_diff": worst, "argmax_agreement": agree / total, "atol": atol,
            "passed": worst <= atol and agree == total}


def lean_or_reason(model, adapters: list[str]) -> tuple[LeanDecoder | None, str]:
    """(the lean decoder, "lean") when it runs this model and matches peft_forward; else (None, why not)."""
    reason = unsupported(model)
    if reason is None:
        decoder = LeanDecoder(model, adapters)
        parity = lean_parity(model, decoder, adapters)
        if parity["passed"]:
            return decoder, "lean"
        reason = (f"its logits differ from transformers + peft's: max |diff| {parity['max_abs_diff']:.3g} > atol "
                  f"{parity['atol']}, argmax agreement {parity['argmax_agreement']:.1%}")
        log.error("lean decoder refused: %s", reason)
    log.warning("generating with transformers + peft's forward (slower on CPU); the lean decoder: %s", reason)
    return None, f"transformers: {reason}"


class OnnxBackend:
    mixes_adapters = False
    joins_running = True
    path = "onnx"

    def __init__(self, snapshot: Snapshot, cache_dir: Path):
        from transformers import AutoConfig

        from qeforge.serving.onnx_runtime import OnnxCausalLM, check_parity, export_merged

        self.models: dict[str, OnnxCausalLM] = {}
        self.refused: dict[str, str] = {}
        for category, adapter in snapshot.adapters.items():
            out = adapter.onnx_dir
            if out is None:
                key = hashlib.sha256(f"{snapshot.base_model}\0{adapter.path.resolve()}".encode()).hexdigest()[:10]
                # export_merged skips the export when the dir already holds this base + adapter hash
                out = export_merged(snapshot.base_model, adapter.path, Path(cache_dir) / category / f"{adapter.version}-{key}")
            parity = check_parity(snapshot.base_model, adapter.path, out)
            if not parity["passed"]:
                self.refused[category] = (
                    f"not serving {category}: its ONNX model does not match PyTorch base + adapter "
                    f"{adapter.version}: max |logit diff| {parity['max_abs_diff']:.3g} > atol {parity['atol']}, "
                    f"argmax agreement {parity['argmax_agreement']:.1%}")
                log.error("%s (ONNX dir %s)", self.refused[category], out)  # /health shows the reason, not host paths
                continue
            self.models[category] = OnnxCausalLM(out)
        self.context = _context(AutoConfig.from_pretrained(snapshot.base_model))

    def forward(self, categories: list[str], ids: np.ndarray, mask: np.ndarray, past):
        logits, present = self.models[categories[0]].forward(ids, mask, past)
        return logits[:, -1], present

    def select(self, past, rows: list[int]):
        return [p[rows] for p in past]

    def stack(self, a, b, pads: list[int]):
        left = lambda x, n: np.pad(x, ((0, 0), (0, 0), (n, 0), (0, 0)))  # noqa: E731 - [batch, heads, positions, dim]
        return [np.concatenate([left(x, pads[0]), left(y, pads[1])]) for x, y in zip(a, b)]

    def crop_left(self, past, n: int):
        return [p[:, :, n:] for p in past]
