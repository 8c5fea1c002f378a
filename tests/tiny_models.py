"""Tiny Phi-3 bases and LoRA adapters for tests: seconds to build, distinct answers per adapter."""

from __future__ import annotations

from pathlib import Path

LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def build_base(root: Path) -> Path:
    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages([{"role": "system", "content": SYSTEM_PROMPTS[c]},
                              {"role": "user", "content": f"def f{i}(x):\n    return x * {i}"},
                              {"role": "assistant", "content": f"def test_f{i}():\n    assert f{i}(2) == {2 * i}"}])
             for i in range(40) for c in SYSTEM_PROMPTS]
    return build_tiny_base(texts, root / "base", steps=10, vocab_size=400, hidden_size=32, num_layers=1,
                           num_heads=2, block_size=64, batch_size=4)


def random_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter whose lora_B weights are random: each seed answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out
