"""The CPU generation path: a lean decoder over a PeftModel's own tensors, every adapter in one matmul.

Why not the model's own forward: on SmolLM2-135M with four LoRA adapters, 2 cores, the time of a
transformers + peft step went to (a) SDPA's CPU flash kernel, ~4.6 ms per layer call for one query row,
(b) peft's LoRA: per module and per adapter in the batch an index, a sub-batch forward and a scatter,
and (c) MKL's GEMVs on [out, in] weights. Here:
- attention is two batched matmuls with the grouped KV heads broadcast (no repeat_kv copy);
- the linears that read one input run as one matmul with every adapter's LoRA A beside them, through
  oneDNN's packed weights (FusedLinear and onednn_pack say why and what it costs);
- the KV cache is one preallocated tensor per layer, appended in place (capacity doubles), so a step
  copies nothing of the past;
- a one-token step (every step after the prefill) is one C++ call (decode_step.cpp, DecodeStep): for
  one row (one client) the whole step in one OpenMP parallel region on its own GEMV, which reads only
  the row's adapter's LoRA A rows; for more rows the same oneDNN GEMMs, and the ~1,500 small eager ops
  between them (norms, RoPE, attention, LoRA B) as loops.
Measured on SmolLM2 + four adapters, 2 cores, in-process (bench/lean_decoder.py, whose README entry
gives the run): one row with an adapter ~9.7-13.5 ms a step as the host's memory allows (op by op in
C++ on oneDNN 11.8-16.0, in Python ~20, transformers + peft's forward 54.9); 16 rows of four adapters
~35 ms, ~450 tokens/s (transformers + peft: 137.9).
In the shim the generation thread must be the only one driving OpenMP workers (threads.py).
The weights are the model's own tensors, regrouped in place (the model's forward reads the same
numbers); only the stacked LoRA B matrices are new (~1% of the model). Numerics: transformers' eager
ops in the same dtype, with the LoRA sums reassociated; backends.lean_parity compares logits with the
PeftModel's forward when a backend loads, and the backend refuses this path when they differ.

Weights: the model's own dtype, or weight-only int8 on the CPU (LeanDecoder.quantize_int8): 1/4 of
the fp32 bytes a step reads, for the one-client latency a step's GEMVs bound (538 MB of fp32 weights).
Measured in-process, one row: 5.3 ms a step (op by op on torch's int8 kernel 7.4, in Python 11.6).

Supported: model_type llama and phi3 (SmolLM2, Phi-3, Phi-4) without a sliding window, LoRA without
DoRA or LoRA bias. `unsupported()` says why anything else runs on the PeftModel's forward instead.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "phi3")
DECODE_STEP_SOURCE = Path(__file__).with_name("decode_step.cpp")


@functools.cache
def decode_step_module():
    """decode_step.cpp built with torch's C++ extension loader: ~30 s once per machine and source (the
    build is cached under TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions, and named by the
    source's hash so an edit rebuilds), then a load. Raises when it cannot be built (no C++ compiler)."""
    from torch.utils.cpp_extension import load

    from qeforge.locations import put_environment_scripts_on_path

    digest = hashlib.sha256(DECODE_STEP_SOURCE.read_bytes()).hexdigest()[:12]
    put_environment_scripts_on_path()  # torch runs `ninja` from PATH: the ninja package's, in this environment
    log.info("loading the C++ decode step (building it takes ~30 s the first time on this machine)")
    return load(name=f"qeforge_decode_step_{digest}", sources=[str(DECODE_STEP_SOURCE)],
                extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], with_cuda=False)


def unsupported(model) -> str | None:
    """Why the lean decoder cannot run this PeftModel (or plain model), or None when it can."""
    from peft.tuners.lora import LoraLayer

    config = model.config
    if config.model_type not in ARCHITECTURES:
        return f"does not run architecture {config.model_type!r} (it knows {', '.join(ARCHITECTURES)})"
    if getattr(config, "sliding_window", None) is not None:
        return "does not run sliding-window attention (its cache does not window)"
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if any(module.use_dora.values()):
                return f"does not run DoRA ({name})"
            if any(getattr(module, "lora_bias", {}).values()):
                return f"does not run LoRA with a bias ({name})"
    return None


def onednn_pack(weight):
    """`weight` [out, in] reordered for oneDNN's GEMM, or None off the CPU, outside fp32 or without
    oneDNN. Why, measured on SmolLM2-135M's linears (one step's weights, 538 MB, 2 idle cores): one row
    15.0 ms a step vs 26.4 for MKL's GEMV on [in, out] (34.6 on [out, in]); 4 rows 19.7 vs 52.0;
    16 rows 24.0 vs 69.1. Packed for 16 rows (the hint): packed for one it is slower at every count (19.6
    ms for one row). The price: the packed copy doubles the weights' memory (SmolLM2-135M: +538 MB).
    These are the ops torch.compile's CPU freezing pass emits for Linear (torch.ops.mkldnn), so they
    exist wherever that pass works."""
    import torch

    usable = (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    return torch.ops.mkldnn._reorder_linear_weight(weight, 16) if usable else None


class FusedLinear:
    """Linear modules that read the same input (q, k, v; gate, up; or one alone) as one matmul, with
    every adapter's LoRA A below their weights: x [.., in] @ W_ext^T (W_ext [out + R, in]) gives the base
    outputs and every adapter's rank projections at once; then delta = z_A @ B, where B [R, out] holds each
    adapter's B (scaling folded in) on its modules' output columns. One row or one adapter: that
    adapter's span of z_A and B only; mixed rows: z_A * mask, each row keeping its adapter's span.
    Why: per step a Llama layer is 4 GEMVs + 4 small matmuls instead of 7 + 14 (measured: a step of
    one row with one adapter cost 17 ms more than the base alone with per-module LoRA matmuls).
    W_ext is stored [out + R, in] (nn.Linear's layout, so each module's weight and each adapter's A are
    contiguous row blocks of it) and the modules' own weights become views of it, so nothing is held
    twice and the model's own forward reads the same numbers; on the CPU in fp32 the step multiplies by
    oneDNN's packed copy of it (onednn_pack), or reads it directly (decode_step.cpp, one row)."""

    def __init__(self, modules: list, slots: dict[str, int]):
        import torch
        from peft.tuners.lora import LoraLayer

        bases = [m.get_base_layer() if isinstance(m, LoraLayer) else m for m in modules]
        widths = [b.out_features for b in bases]
        offsets = np.cumsum([0, *widths]).tolist()
        self.out, self.slots = offsets[-1], len(slots) + 1
        a_blocks, b_rows = [], []
        self.spans: dict[int, tuple[int, int]] = {}  # slot -> its columns of z_A (rows of B)
        rank = 0
        for name, slot in slots.items():
            start = rank
            for j, m in enumerate(modules):
                if isinstance(m, LoraLayer) and name in m.lora_A:
                    lora_a, lora_b = m.lora_A[name].weight, m.lora_B[name].weight  # [r, in], [out_j, r]
                    row = lora_b.new_zeros(lora_a.shape[0], self.out)
                    row[:, offsets[j]:offsets[j + 1]] = lora_b.t() * m.scaling[name]
                    a_blocks.append(lora_a)
                    b_rows.append(row)
                    rank += lora_a.shape[0]
            if rank > start:
                self.spans[slot] = (start, rank)
        with torch.no_grad():
            self.weight = torch.cat([b.weight for b in bases] + a_blocks).contiguous()
            for b, lo, hi in zip(bases, offsets, offsets[1:]):
                b.weight.data = self.weight[lo:hi]
        biases = [b.bias for b in bases]
        self.bias = None
        if any(x is not None for x in biases):
            self.bias = torch.cat([x if x is not None else self.weight.new_zeros(w) for x, w in zip(biases, widths)]
                                  + [self.weight.new_zeros(rank)])
        self.B = torch.cat(b_rows) if b_rows else None  # [R, out]
        self.key = tuple(sorted(self.spans.items()))  # the mask layout mixed batches need
        self.packed = onednn_pack(self.weight)
        self.packed_B = onednn_pack(self.B.t().contiguous()) if self.B is not None else None  # z_A [.., R] -> [.., out]
        self.int8 = None  # (weights [out + R, in] int8, scales [out + R] bf16) once quantize_int8 ran

    def quantize_int8(self) -> None:
        """Weight-only int8, symmetric per output column of W_ext (the base outputs and each LoRA A rank
        alike): w ~ q * scale, q in [-127, 127], scale = max|w| / 127 rounded to bf16 first (the kernel's
        scale dtype) so q is rounded against the scale it is multiplied by. The step runs torch's
        weight-only kernel on bf16 activations (fp32 accumulation); LoRA B and everything between the
        linears stay in the model's dtype. The packed fp32 copy is dropped; the model's own weights stay."""
        import torch

        w = self.weight
        scale = (w.abs().amax(1).clamp(min=1e-12) / 127).to(torch.bfloat16)
        self.int8 = (torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale)
        self.packed = None

    def __call__(self, x, batch):
        import torch

        if self.int8 is not None:
            rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            z = torch.ops.aten._weight_int8pack_mm(rows, *self.int8).to(x.dtype).view(*x.shape[:-1], -1)
            if self.bias is not None:
                z = z + self.bias
        elif self.packed is not None:
            z = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        else:  # GPU, half precision, or no oneDNN
            z = x @ self.weight.t() if self.bias is None else x @ self.weight.t() + self.bias
        y = z[..., :self.out]
        if self.B is None:
            return y
        if batch.single is not None:  # every row on one adapter (always so for one client): its span only
            span = self.spans.get(batch.single)
            if span is None:
                return y
            start, end = span
            return y + z[..., self.out + start:self.out + end] @ self.B[start:end]
        z_a = z[..., self.out:] * batch.masks[self.key]
        if self.packed_B is not None:
            return y + torch.ops.mkldnn._linear_pointwise(z_a, self.packed_B, None, "none", [], "")
        return y + z_a @ self.B

    def add_to(self, step) -> None:
        """Hand this linear's tensors to a DecodeStep (decode_step.cpp's Linear reads the same fields)."""
        spans = [0, 0] * self.slots
        for slot, (start, end) in self.spans.items():
            spans[2 * slot:2 * slot + 2] = [start, end]
        int8, scales = self.int8 if self.int8 is not None else (None, None)
        step.add_linear(self.packed, self.bias, self.weight, int8, scales, self.B, spans, self.out)

    def mask(self, row_slots):
        """[rows, 1, R]: 1 on each row's adapter span of z_A, 0 elsewhere (and everywhere for the base)."""
        table = self.B.new_zeros(self.slots, self.B.shape[0])
        for slot, (start, end) in self.spans.items():
            table[slot, start:end] = 1
        return table[row_slots][:, None, :]


class _Rows:
    """Which adapter each row of a forward runs with, in the form FusedLinear reads."""

    def __init__(self, decoder: LeanDecoder, adapters: list[str | None]):
        import torch

        slots = decoder.slots_of(adapters)
        self.single = slots[0] if len(set(slots)) == 1 else None  # slot 0: the base alone, no span matches
        self.masks = {}
        if self.single is None:
            row_slots = torch.tensor(slots, device=decoder.device)
            self.masks = {key: linear.mask(row_slots) for key, linear in decoder.lora_layouts.items()}


class KVCache:
    """Keys and values of every layer, [layers][rows, kv_heads, capacity, head_dim]; `length` positions used."""

    def __init__(self, keys: list, values: list, length: int):
        self.keys, self.values, self.length = keys, values, length

    @staticmethod
    def empty(layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int, like) -> KVCache:
        import torch

        new = lambda: torch.zeros(rows, kv_heads, capacity, head_dim, dtype=like.dtype, device=like.device)  # noqa: E731
        return KVCache([new() for _ in range(layers)], [new() for _ in range(layers)], 0)

    def reserve(self, extra: int) -> None:
        """Room for `extra` more positions: capacity doubles (amortized O(1) copies per step)."""
        import torch

        capacity = self.keys[0].shape[2]
        if self.length + extra <= capacity:
            return
        grown = max(2 * capacity, self.length + extra)
        pad = lambda t: torch.nn.functional.pad(t[:, :, :self.length], (0, 0, 0, grown - self.length))  # noqa: E731
        self.keys, self.values = [pad(k) for k in self.keys], [pad(v) for v in self.values]

    def append(self, layer: int, k, v):
        """Write k, v [rows, kv_heads, new, dim] after the used positions; the keys and values up to them."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select(self, rows: list[int]) -> KVCache:
        import torch

        index = torch.tensor(rows, device=self.keys[0].device)
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values], self.length)

    def stack(self, other: KVCache, pads: list[int]) -> KVCache:
        """self's rows then other's, each left-padded by its pad (zeros: masked out)."""
        length = self.length + pads[0]
        assert length == other.length + pads[1], "stacked caches must end at the same position"

        def both(a, b):
            out = a.new_zeros(a.shape[0] + b.shape[0], a.shape[1], length + 64, a.shape[3])
            out[:a.shape[0], :, pads[0]:length] = a[:, :, :self.length]
            out[a.shape[0]:, :, pads[1]:length] = b[:, :, :other.length]
            return out

        return KVCache([both(a, b) for a, b in zip(self.keys, other.keys)],
                       [both(a, b) for a, b in zip(self.values, other.values)], length)

    def crop_left(self, n: int) -> KVCache:
        return KVCache([k[:, :, n:] for k in self.keys], [v[:, :, n:] for v in self.values], self.length - n)


class LeanDecoder:
    """forward(slots, ids, mask, cache) -> (last-position logits, cache), over a (Peft)model's tensors."""

    def __init__(self, model, adapters: list[str]):
        """`model`: a PeftModel (or a plain model: no adapters); `adapters`: the adapter names, slot 1..n
        (slot 0 is the base alone)."""
        from transformers.activations import ACT2FN

        reason = unsupported(model)
        if reason:
            raise ValueError(f"the lean decoder {reason}")
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        config, body = inner.config, inner.model
        self.slots = {name: i + 1 for i, name in enumerate(adapters)}
        self.phi3 = config.model_type == "phi3"
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.act = ACT2FN[config.hidden_act]
        self.embed, self.norm, self.rotary = body.embed_tokens, body.norm, body.rotary_emb
        fused = lambda *modules: FusedLinear(list(modules), self.slots)  # noqa: E731
        self.lm_head = fused(inner.lm_head)
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "in_norm": layer.input_layernorm, "post_norm": layer.post_attention_layernorm,
                "qkv": fused(attn.qkv_proj) if self.phi3 else fused(attn.q_proj, attn.k_proj, attn.v_proj),
                "o": fused(attn.o_proj),
                "gate_up": fused(mlp.gate_up_proj) if self.phi3 else fused(mlp.gate_proj, mlp.up_proj),
                "down": fused(mlp.down_proj)})
        # one FusedLinear per distinct mask layout: a mixed batch builds each mask once per forward
        self.lora_layouts = {m.key: m for layer in self.layers for m in layer.values()
                             if isinstance(m, FusedLinear) and m.B is not None}
        if self.lm_head.B is not None:
            self.lora_layouts.setdefault(self.lm_head.key, self.lm_head)
        self.dtype, self.device = self.embed.weight.dtype, self.embed.weight.device
        self.eps = self.norm.variance_epsilon
        self.silu = config.hidden_act == "silu"
        self.weights = "model"  # or "int8" after quantize_int8
        self.step, self.step_reason = self.compiled_step()

    def slots_of(self, adapters: list[str | None]) -> list[int]:
        unknown = {a for a in adapters if a is not None and a not in self.slots}
        if unknown:  # as peft does: a row never silently falls back to the base
            raise ValueError(f"no adapter named {sorted(unknown)} (loaded: {sorted(self.slots)})")
        return [self.slots[a] if a is not None else 0 for a in adapters]

    def compiled_step(self):
        """(decode_step.cpp's DecodeStep over these weights, "") for one-token steps on the CPU in fp32
        or int8, or (None, why not): those steps then run in Python (_forward), slower (SmolLM2, one row:
        16.4 ms a step against 8.6)."""
        import torch

        if self.device.type != "cpu" or self.dtype != torch.float32:
            return None, f"the C++ step runs fp32 models on the CPU (this one: {self.dtype} on {self.device.type})"
        if not self.silu:
            return None, "the C++ step knows the SiLU MLP only"
        try:
            module = decode_step_module()
        except (RuntimeError, OSError, ImportError) as err:  # no compiler or ninja, a read-only cache: Python answers
            log.warning("one-token steps run in Python: the C++ decode step did not build (%s)", err)
            return None, f"the C++ step did not build: {err}"
        step = module.DecodeStep(self.heads, self.kv_heads, self.head_dim, self.scale, self.eps)
        for linear in [m for layer in self.layers for m in (layer["qkv"], layer["o"], layer["gate_up"], layer["down"])]:
            linear.add_to(step)
        self.lm_head.add_to(step)
        for layer in self.layers:
            step.add_norm(layer["in_norm"].weight)
            step.add_norm(layer["post_norm"].weight)
        step.add_norm(self.norm.weight)
        return step, ""

    def fused_linears(self) -> list[FusedLinear]:
        return [self.lm_head] + [m for layer in self.layers for m in layer.values() if isinstance(m, FusedLinear)]

    def int8_unsupported(self) -> str | None:
        """Why quantize_int8 cannot run here, or None. torch's kernel is the CPU's, and it reads the
        input features in blocks of 16 (other widths crash it: checked here, not there)."""
        import torch

        if self.device.type != "cpu":
            return f"int8 weights run on the CPU kernel only (the model is on {self.device.type})"
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return "this torch has no _weight_int8pack_mm"
        widths = sorted({m.weight.shape[1] for m in self.fused_linears() if m.weight.shape[1] % 16})
        return f"int8 weights need input widths that are multiples of 16, not {widths}" if widths else None

    def quantize_int8(self) -> None:
        """Every fused linear (lm_head included) to weight-only int8 (FusedLinear.quantize_int8)."""
        reason = self.int8_unsupported()
        if reason:
            raise ValueError(reason)
        for linear in self.fused_linears():
            linear.quantize_int8()
        self.weights = "int8"
        self.step, self.step_reason = self.compiled_step()  # it held the fp32 packed weights

    def forward(self, row_adapters: list[str | None], ids: np.ndarray, mask: np.ndarray, cache: KVCache | None):
        import torch

        with torch.inference_mode():
            return self._forward(row_adapters, ids, mask, cache)

    def _forward(self, row_adapters, ids, mask, cache):
        import torch

        rows, new = ids.shape
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).to(self.device)
        if new == 1 and cache is not None and self.step is not None:
            return self._compiled_forward(row_adapters, ids, mask_t, cache)
        if cache is None:
            cache = KVCache.empty(len(self.layers), rows, self.kv_heads, new + 64, self.head_dim, self.embed.weight)
        cache.reserve(new)
        # Left padding shifts real tokens right: positions count real tokens only (as generate() does).
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)[:, -new:]
        h = self.embed(torch.from_numpy(np.ascontiguousarray(ids)).to(self.device))
        batch = _Rows(self, row_adapters)
        cos, sin = self.rotary(h, positions)
        cos, sin = cos[:, :, None], sin[:, :, None]  # [rows, new, 1 (heads), rotary dim]
        bias = self._bias(mask_t, new, h.dtype, rows)
        for i, layer in enumerate(self.layers):
            x = self._norm(layer["in_norm"], h)
            q, k, v = self._qkv(layer, x, batch, rows, new, cos, sin)
            k, v = cache.append(i, k, v)
            h = h + layer["o"](self._attend(q, k, v, bias), batch)
            x = self._norm(layer["post_norm"], h)
            gate, up = layer["gate_up"](x, batch).chunk(2, dim=-1)  # Phi-3's fused layout, and Llama's fused here
            h = h + layer["down"](self.act(gate) * up, batch)
        cache.length += new
        logits = self.lm_head(self._norm(self.norm, h[:, -1:]), batch)
        return logits[:, -1].float().cpu().numpy(), cache

    def _compiled_forward(self, row_adapters, ids, mask_t, cache):
        """One token per row through decode_step.cpp: embedding and RoPE's cos/sin here (transformers'
        rotary module, so every RoPE scaling it knows), everything after in one C++ call."""
        import torch

        slots = self.slots_of(row_adapters)
        cache.reserve(1)
        if not cache.keys[0].is_contiguous():  # crop_left's views: the step writes at [.., length, ..]
            cache.keys, cache.values = [k.contiguous() for k in cache.keys], [v.contiguous() for v in cache.values]
        mask_t = mask_t.to(torch.int64)
        h = self.embed(torch.from_numpy(np.ascontiguousarray(ids)).to(self.device))
        cos, sin = self.rotary(h, mask_t.sum(-1, keepdim=True) - 1)  # the new token's position: real tokens before it
        logits = self.step.forward(h[:, 0].contiguous(), cos[:, 0], sin[:, 0], mask_t, cache.keys, cache.values,
                                   cache.length, slots)
        cache.length += 1
        return logits.numpy(), cache

    def _norm(self, module, x):
        """transformers' RMSNorm; in fp32 as torch's one fused op (the same formula, ~6 ops fewer a call)."""
        import torch

        if x.dtype != torch.float32:
            return module(x)  # transformers upcasts half precision to fp32 inside: keep its exact steps
        return torch.nn.functional.rms_norm(x, x.shape[-1:], module.weight, module.variance_epsilon)

    def _qkv(self, layer, x, batch, rows, new, cos, sin):
        """q [rows, heads, new, dim], k and v [rows, kv_heads, new, dim] from the fused projection, q and k
        rotated together (one RoPE over their heads)."""
        heads = layer["qkv"](x, batch).view(rows, new, -1, self.head_dim)
        qk = self._rope(heads[:, :, :self.heads + self.kv_heads], cos, sin)
        return (qk[:, :, :self.heads].transpose(1, 2), qk[:, :, self.heads:].transpose(1, 2),
                heads[:, :, self.heads + self.kv_heads:].transpose(1, 2))

    @staticmethod
    def _rope(x, cos, sin):
        """transformers' apply_rotary_pos_emb (rotate_half form), partial rotary included (Phi-3 style);
        x [rows, new, heads, dim]."""
        import torch

        rot = cos.shape[-1]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
        out = x_rot * cos + rotated * sin
        return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)

    def _bias(self, mask_t, new: int, dtype, rows: int):
        """Additive attention bias [rows x kv_heads, groups x new, past+new] (the layout _attend's batched
        matmuls use): 0 where a query may look, the dtype's minimum elsewhere (pads, and the future within
        the new tokens). Finite, as in transformers: a pad query that sees nothing gets a uniform average
        of finite values rather than NaN in the cache."""
        import torch

        total = mask_t.shape[1]
        allowed = mask_t[:, None, None, None, :].bool()  # [rows, kv_heads, groups, new, total]
        if new > 1:
            causal = torch.ones(new, total, dtype=torch.bool, device=mask_t.device).tril(total - new)
            allowed = allowed & causal
        groups = self.heads // self.kv_heads
        bias = torch.zeros(allowed.shape, dtype=dtype, device=mask_t.device).masked_fill_(~allowed, torch.finfo(dtype).min)
        return bias.expand(rows, self.kv_heads, groups, new, total).reshape(rows * self.kv_heads, groups * new, total)

    def _attend(self, q, k, v, bias):
        """softmax(q k^T / sqrt(d) + bias) v with the query heads grouped over their KV head (GQA): two
        batched matmuls over [rows x kv_heads], no repeated K/V; [rows, new, heads x dim] out."""
        import torch

        rows, heads, new, dim = q.shape
        total = k.shape[2]
        q = q.reshape(rows * self.kv_heads, heads // self.kv_heads * new, dim)
        scores = torch.baddbmm(bias, q, k.reshape(rows * self.kv_heads, total, dim).transpose(1, 2), alpha=self.scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.bmm(probs, v.reshape(rows * self.kv_heads, total, dim))
        return out.view(rows, heads, new, dim).transpose(1, 2).reshape(rows, new, heads * dim)
