"""Random LoRA adapters for benches and tests: a fresh LoRA (lora_B = 0) changes nothing, so B is drawn."""

from __future__ import annotations

from pathlib import Path


def random_lora(base: str | Path, out: Path, seed: int, *, targets: list[str], r: int = 16, scale: float) -> Path:
    """LoRA r (alpha 2r, no dropout) on `targets` with lora_B ~ N(0, scale^2), lora_A as peft draws it, both
    from `seed`: the same seed gives the same adapter in every run, each seed answers differently."""
    from transformers import AutoModelForCausalLM

    return random_lora_on(AutoModelForCausalLM.from_pretrained(base), out, seed, targets=targets, r=r, scale=scale)


def random_lora_on(model, out: Path, seed: int, *, targets: list[str], r: int = 16, scale: float) -> Path:
    """random_lora on a model already in memory (on any device); the model is left without LoRA layers."""
    import torch
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):  # lora_A's init draws from the global generator: seeded too
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    peft_model.unload()  # the LoRA layers out again, so the next adapter (or the server) sees the plain base
    return out
