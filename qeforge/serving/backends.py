"""The models a snapshot's batches run on: one forward per step for every row (see batching.py).

TorchBackend: the base once, every adapter resident in one PeftModel; each row of a batch picks its
adapter (peft's `adapter_names=`), so one batch mixes categories. OnnxBackend: one merged (base +
adapter) graph per category, so a batch holds one category; each graph is checked against PyTorch
when it is loaded, and a graph that fails is refused (`refused`: category -> why), not served.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from qeforge.serving.source import Snapshot

log = logging.getLogger(__name__)


def _context(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 4096)


class TorchBackend:
    mixes_adapters = True

    def __init__(self, snapshot: Snapshot, base=None):
        """`base`: the base model already in memory (bench.gpu_phi4's random-weight Phi-4), else
        snapshot.base_model is loaded. The adapters are loaded onto the base's device."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = base if base is not None else AutoModelForCausalLM.from_pretrained(snapshot.base_model, dtype="auto")
        for category, adapter in snapshot.adapters.items():
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter.path), adapter_name=category)
            else:
                model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=category)
        self.model = model.eval()
        self.device = next(model.parameters()).device  # batches arrive as numpy on the CPU
        self.context = _context(model.config)
        self.refused: dict[str, str] = {}
        # A sliding-window cache keeps only the last window's positions, so padding one to stack it
        # under another would not line up: those models wait for the running batch to end instead.
        self.joins_running = getattr(model.config, "sliding_window", None) is None

    def forward(self, categories: list[str], ids: np.ndarray, mask: np.ndarray, past):
        import torch

        mask_t = torch.from_numpy(mask).to(self.device)
        # Left padding shifts real tokens right: positions count real tokens only, as generate() does.
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(self.device),
                             attention_mask=mask_t, position_ids=positions, past_key_values=past, use_cache=True,
                             logits_to_keep=1, adapter_names=categories)
        return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

    def select(self, past, rows: list[int]):
        import torch

        past.batch_select_indices(torch.tensor(rows, device=self.device))
        return past

    def stack(self, a, b, pads: list[int]):
        import torch

        for la, lb in zip(a.layers, b.layers):
            la.keys, la.values = (torch.cat([torch.nn.functional.pad(x, (0, 0, pads[0], 0)),
                                             torch.nn.functional.pad(y, (0, 0, pads[1], 0))])
                                  for x, y in ((la.keys, lb.keys), (la.values, lb.values)))
        return a

    def crop_left(self, past, n: int):
        for layer in past.layers:
            layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]
        return past


class OnnxBackend:
    mixes_adapters = False
    joins_running = True

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
