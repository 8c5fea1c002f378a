"""LoRA target modules per architecture (config.model_type): every linear layer of each block.

A recipe that leaves `lora_target_modules` unset gets these; the resolved list is what the
training summary, the MLflow run's params and the model card record.
"""

LORA_TARGETS = {
    # Llama (SmolLM2): separate q/k/v and gate/up projections, 7 linear modules per block.
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # Phi-3 / Phi-4 (model_type phi3) fuse q/k/v and gate/up: these 4 names cover the same layers.
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def lora_targets(model_type: str) -> list[str]:
    if model_type not in LORA_TARGETS:
        raise KeyError(f"no LoRA targets known for architecture {model_type!r} (known: {sorted(LORA_TARGETS)}); "
                       "set lora_target_modules in the recipe")
    return list(LORA_TARGETS[model_type])
