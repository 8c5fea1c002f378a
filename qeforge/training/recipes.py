"""Where the SFT recipes live. profile "phi-4": one YAML per category (production);
profile "tiny": one shared CPU recipe for the embedded default, specialised per category by
`load_recipe(path, overrides={"model_name_or_path": ..., "dataset_path": ..., "category": ...,
"output_dir": ...})`."""

from pathlib import Path

from qeforge.categories import CATEGORIES
from qeforge.locations import PROJECT_ROOT

RECIPES_DIR = PROJECT_ROOT / "recipes"
PROFILES = ("phi-4", "tiny")


def recipe_path(profile: str, category: str) -> Path:
    if profile not in PROFILES or category not in CATEGORIES:
        raise ValueError(f"unknown profile/category {profile!r}/{category!r}; profiles {PROFILES}, categories {CATEGORIES}")
    name = "config_cpu.yaml" if profile == "tiny" else f"config_{category}.yaml"
    return RECIPES_DIR / profile / "sft" / name
