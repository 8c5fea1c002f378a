"""Random LoRA adapters for benches and tests: a fresh LoRA (lora_B = 0) changes nothing, so B is drawn."""

from __future__ import annotations

from pathlib import Path


def random_lora(base: str | Path, out: Path, seed: int, *, targets: list[str], r: int = 16, scale: float) -> Path:
    """LoRA r (alpha 2r, no dropout) on `targets` with lora_B ~ N(0, scale^2); each seed answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out)
    return out
