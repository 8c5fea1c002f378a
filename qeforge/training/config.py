"""Recipe loading: one YAML -> (ScriptArguments, SFTConfig, ModelConfig), with errors that say what to fix.

Used by the CLI (`python -m qeforge.training.sft --config ...`) and by the Dagster assets,
so a typo in a recipe fails the same way, before any model is loaded.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe, dataset or model does not fit together; the message says what to change."""


@dataclass
class ScriptArguments:
    dataset_path: str = field(default="", metadata={"help": "Category DatasetDict dir (train/validation/test)."})
    category: str = field(default="", metadata={"help": "Category name, recorded in the summary."})
    force: bool = field(default=False, metadata={"help": "Retrain even if an identical run already finished."})


def _dataclass_types():
    from trl import ModelConfig, SFTConfig

    return (ScriptArguments, SFTConfig, ModelConfig)


def known_keys() -> set[str]:
    return {f.name for cls in _dataclass_types() for f in fields(cls) if f.init} | {"env"}


def check_recipe_keys(cfg: dict[str, Any], source: str = "recipe") -> None:
    unknown = sorted(set(cfg) - known_keys())
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known_keys(), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RecipeError(
            f"{source}: unknown field(s) {', '.join(hints)}; remove them or use fields of "
            "ScriptArguments, trl.SFTConfig or trl.ModelConfig"
        )


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe YAML as a dict, overrides applied on top, keys checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of field: value")
    cfg.update(overrides or {})
    check_recipe_keys(cfg, str(path))
    return cfg


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None):
    """Build (ScriptArguments, SFTConfig, ModelConfig) from a recipe YAML plus overrides.

    The tiny CPU recipe is shared by all categories; the caller specialises it, e.g.
    load_recipe(recipe_path("tiny", c), overrides={"model_name_or_path": base_dir,
    "dataset_path": ds_dir, "category": c, "output_dir": out_dir}).
    """
    from trl import TrlParser

    cfg = read_recipe(path, overrides)
    cfg.pop("env", None)  # env vars are the CLI's business (TrlParser sets them); not part of a recipe's identity
    # Same route as TrlParser --config: values become argparse defaults, so strings from YAML
    # ("2e-4", which YAML 1.1 leaves a string) get each field's type conversion.
    parser = TrlParser(_dataclass_types())
    parser.set_defaults_with_config(**cfg)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=[]))
    except (ValueError, TypeError) as e:
        hint = " (this machine has no bf16 GPU: use the tiny profile, or override bf16: false)" if "bf16" in str(e) else ""
        raise RecipeError(f"recipe {path}: {e}{hint}") from e
