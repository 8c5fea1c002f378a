"""The CPU generation path: a lean decoder over a PeftModel's own tensors, every adapter in one matmul.

Why not the model's own forward: on SmolLM2-135M with four LoRA adapters, 2 cores, a decode step of
one row cost ~200 ms through transformers + peft (llama.cpp: ~53 ms). The time went to
(a) SDPA's CPU flash kernel, ~4.6 ms per layer call for a single query row (65% of the step), and
(b) peft's mixed-batch LoRA: per module and per adapter in the batch, an index, a sub-batch forward and a
scatter, 210 modules x 4 adapters of Python per step. Here:
- attention is two batched matmuls with the grouped KV heads broadcast (no repeat_kv copy);
- each LoRA'd linear keeps every adapter stacked: A_all [in, R] and B_all [R, out], R = sum of the
  ranks. One step computes y = x W^T + ((x A_all) * S[row]) B_all, where S[row] holds the row's
  adapter's scaling on its own rank columns and zeros elsewhere, so rows with different adapters (and
  base-only rows, all zeros) share two matmuls. The extra cost: 4 adapters x r 16 = 64 columns beside
  W's 576..1536, i.e. 64/576 + 64/1536 of a module's FLOPs at most (~15%), and no Python per adapter;
- the KV cache is one preallocated tensor per layer, appended in place (capacity doubles), so a step
  copies nothing of the past.
The weights are the PeftModel's own tensors (no copy; only A_all/B_all are new, ~1% of the model).
Numerics: the same ops as transformers' eager path in the same dtype, with the LoRA sum reassociated;
`parity` compares logits with the PeftModel's forward and the backend refuses this path when they differ.

Supported: model_type llama and phi3 (SmolLM2, Phi-3, Phi-4) without a sliding window, LoRA without
DoRA or LoRA bias. `unsupported()` says why anything else runs on the PeftModel's forward instead.
"""

from __future__ import annotations

import numpy as np

ARCHITECTURES = ("llama", "phi3")


def unsupported(model) -> str | None:
    """Why the lean decoder cannot run this PeftModel (or plain model), or None when it can."""
    from peft.tuners.lora import LoraLayer

    config = model.config
    if config.model_type not in ARCHITECTURES:
        return f"architecture {config.model_type!r} (the lean decoder knows {', '.join(ARCHITECTURES)})"
    if getattr(config, "sliding_window", None) is not None:
        return "a sliding-window attention model"
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if any(module.use_dora.values()):
                return f"{name}: DoRA"
            if any(getattr(module, "lora_bias", {}).values()):
                return f"{name}: LoRA with bias"
    return None


class MultiLoraLinear:
    """A linear layer with every adapter's LoRA stacked beside its base weight."""

    def __init__(self, module, slots: dict[str, int]):
        import torch
        from peft.tuners.lora import LoraLayer

        self.layout: tuple = ()
        self.A = self.B = None
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            names = [n for n in module.lora_A if n in slots]
            if names:
                self.A = torch.cat([module.lora_A[n].weight for n in names]).t().contiguous()  # [in, R]
                self.B = torch.cat([module.lora_B[n].weight for n in names], 1).t().contiguous()  # [R, out]
                # (slot, rank, scaling) per block of A_all's columns: the key of the row selector S
                self.layout = tuple((slots[n], module.lora_A[n].weight.shape[0], float(module.scaling[n])) for n in names)
        else:
            base = module
        self.weight, self.bias = base.weight, base.bias

    def __call__(self, x, selectors: dict):
        import torch.nn.functional as F

        y = F.linear(x, self.weight, self.bias)
        if self.A is None:
            return y
        return y + ((x @ self.A) * selectors[self.layout]) @ self.B

    @staticmethod
    def selector(layout: tuple, row_slots, like):
        """S [rows, 1, R]: each row's adapter scaling on its own rank columns, zero elsewhere."""
        import torch

        table = torch.zeros(max(s for s, _, _ in layout) + 1, sum(r for _, r, _ in layout), dtype=like.dtype)
        col = 0
        for slot, rank, scaling in layout:
            table[slot, col:col + rank] = scaling
            col += rank
        return table.to(like.device)[row_slots][:, None, :]


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
            raise ValueError(f"the lean decoder cannot run {reason}")
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        config, body = inner.config, inner.model
        self.slots = {name: i + 1 for i, name in enumerate(adapters)}
        self.phi3 = config.model_type == "phi3"
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.act = ACT2FN[config.hidden_act]
        self.embed, self.norm, self.rotary = body.embed_tokens, body.norm, body.rotary_emb
        self.lm_head = MultiLoraLinear(inner.lm_head, self.slots)
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            linear = lambda m: MultiLoraLinear(m, self.slots)  # noqa: E731
            projections = ({"qkv": linear(attn.qkv_proj), "gate_up": linear(mlp.gate_up_proj)} if self.phi3 else
                           {"q": linear(attn.q_proj), "k": linear(attn.k_proj), "v": linear(attn.v_proj),
                            "gate": linear(mlp.gate_proj), "up": linear(mlp.up_proj)})
            self.layers.append({"in_norm": layer.input_layernorm, "post_norm": layer.post_attention_layernorm,
                                "o": linear(attn.o_proj), "down": linear(mlp.down_proj), **projections})
        self.layouts = {m.layout for layer in self.layers for m in layer.values()
                        if isinstance(m, MultiLoraLinear) and m.A is not None}
        self.layouts |= {self.lm_head.layout} if self.lm_head.A is not None else set()
        self.dtype, self.device = self.embed.weight.dtype, self.embed.weight.device

    def forward(self, row_adapters: list[str | None], ids: np.ndarray, mask: np.ndarray, cache: KVCache | None):
        import torch

        with torch.inference_mode():
            return self._forward(row_adapters, ids, mask, cache)

    def _forward(self, row_adapters, ids, mask, cache):
        import torch

        rows, new = ids.shape
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).to(self.device)
        if cache is None:
            cache = KVCache.empty(len(self.layers), rows, self.kv_heads, new + 64, self.head_dim, self.embed.weight)
        cache.reserve(new)
        # Left padding shifts real tokens right: positions count real tokens only (as generate() does).
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)[:, -new:]
        row_slots = torch.tensor([self.slots.get(a, 0) if a is not None else 0 for a in row_adapters], device=self.device)
        h = self.embed(torch.from_numpy(np.ascontiguousarray(ids)).to(self.device))
        selectors = {layout: MultiLoraLinear.selector(layout, row_slots, h) for layout in self.layouts}
        cos, sin = self.rotary(h, positions)
        bias = self._bias(mask_t, new, h.dtype)
        for i, layer in enumerate(self.layers):
            x = layer["in_norm"](h)
            q, k, v = self._qkv(layer, x, selectors, rows, new)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k, v = cache.append(i, k, v)
            h = h + layer["o"](self._attend(q, k, v, bias).transpose(1, 2).reshape(rows, new, -1), selectors)
            x = layer["post_norm"](h)
            if self.phi3:
                gate, up = layer["gate_up"](x, selectors).chunk(2, dim=-1)
            else:
                gate, up = layer["gate"](x, selectors), layer["up"](x, selectors)
            h = h + layer["down"](self.act(gate) * up, selectors)
        cache.length += new
        logits = self.lm_head(self.norm(h[:, -1:]), selectors)
        return logits[:, -1].float().cpu().numpy(), cache

    def _qkv(self, layer, x, selectors, rows, new):
        shape = lambda t: t.view(rows, new, -1, self.head_dim).transpose(1, 2)  # noqa: E731 - [rows, heads, new, dim]
        if self.phi3:
            qkv = layer["qkv"](x, selectors)
            q_end, k_end = self.heads * self.head_dim, (self.heads + self.kv_heads) * self.head_dim
            return shape(qkv[..., :q_end]), shape(qkv[..., q_end:k_end]), shape(qkv[..., k_end:])
        return shape(layer["q"](x, selectors)), shape(layer["k"](x, selectors)), shape(layer["v"](x, selectors))

    @staticmethod
    def _rope(x, cos, sin):
        """transformers' apply_rotary_pos_emb (rotate_half form), partial rotary included (Phi-3 style)."""
        import torch

        cos, sin = cos[:, None], sin[:, None]
        rot = cos.shape[-1]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
        out = x_rot * cos + rotated * sin
        return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)

    @staticmethod
    def _bias(mask_t, new: int, dtype):
        """Additive attention bias [rows, 1, new, past+new]: 0 where a query may look, the dtype's minimum
        elsewhere (pads, and the future within the new tokens). Finite, as in transformers: a pad query
        that sees nothing gets a uniform average of finite values rather than NaN in the cache."""
        import torch

        total = mask_t.shape[1]
        allowed = mask_t[:, None, None, :].bool()
        if new > 1:
            causal = torch.ones(new, total, dtype=torch.bool, device=mask_t.device).tril(total - new)
            allowed = allowed & causal
        return torch.zeros(allowed.shape, dtype=dtype, device=mask_t.device).masked_fill_(~allowed, torch.finfo(dtype).min)

    def _attend(self, q, k, v, bias):
        """softmax(q k^T / sqrt(d) + bias) v with the query heads grouped over their KV head (GQA)."""
        import torch

        rows, heads, new, dim = q.shape
        groups = heads // self.kv_heads
        q = q.reshape(rows, self.kv_heads, groups * new, dim)
        scores = (q @ k.transpose(-1, -2)).mul_(self.scale).view(rows, self.kv_heads, groups, new, -1)
        scores += bias[:, :, None]
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(rows, self.kv_heads, groups * new, -1)
        return (probs @ v).view(rows, heads, new, dim)
