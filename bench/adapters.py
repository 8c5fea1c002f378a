"""Random LoRA adapters for benches and tests: a fresh LoRA (lora_B = 0) changes nothing, so B is drawn."""

from __future__ import annotations

from pathlib import Path


def random_lora(base: str | Path, out: Path, seed: int, *, targets: list[str], r: int = 16, scale: float) -> Path:
    """LoRA r (alpha 2r, no dropout) on `targets` with lora_B ~ N(0, scale^2); each seed answers differently."""
    from transformers import AutoModelForCausalLM

    return random_lora_on(AutoModelForCausalLM.from_pretrained(base), out, seed, targets=targets, r=r, scale=scale)


def random_lora_on(model, out: Path, seed: int, *, targets: list[str], r: int = 16, scale: float) -> Path:
    """random_lora on a model already in memory (on any device); the model is left without LoRA layers."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    peft_model.unload()  # the LoRA layers out again, so the next adapter (or the server) sees the plain base
    return out
