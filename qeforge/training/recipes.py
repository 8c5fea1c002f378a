"""Where the SFT recipes live, per profile:
- "phi-4": microsoft/phi-4 on a GPU (production), one YAML per category;
- "smol": SmolLM2-135M-Instruct on CPU, one YAML per category;
- "tiny": the embedded default's tiny Phi-3, one shared CPU recipe.
The caller specialises a recipe with `load_recipe(path, overrides={"model_name_or_path": ...,
"dataset_path": ..., "category": ..., "output_dir": ...})`."""

from pathlib import Path

from qeforge.categories import CATEGORIES
from qeforge.locations import PROJECT_ROOT

RECIPES_DIR = PROJECT_ROOT / "recipes"
PROFILES = ("tiny", "smol", "phi-4")


def recipe_path(profile: str, category: str) -> Path:
    if profile not in PROFILES or category not in CATEGORIES:
        raise ValueError(f"unknown profile/category {profile!r}/{category!r}; profiles {PROFILES}, categories {CATEGORIES}")
    name = "config_cpu.yaml" if profile == "tiny" else f"config_{category}.yaml"
    return RECIPES_DIR / profile / "sft" / name
