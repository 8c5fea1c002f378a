"""Training stage: the base model and one LoRA adapter per category partition, tracked in MLflow."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from assets.metadata import md_records
from pipelines.partitions import category_partitions
from pipelines.resources import mlflow_retries, MLflowResource, TrainingSettings
from qeforge.categories import CATEGORIES, registered_model_name
from qeforge.training.adapters import adapter_dir, recorded_run_id, write_run_record

GROUP = "training"


def _pretrained_base(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.Output[dict]:
    """The profile's pretrained base (or TrainingSettings.base_model), a GGUF dequantized once under models/base."""
    from qeforge.training.base_sources import BASE_INFO, PROFILE_BASES, resolve_base
    from qeforge.training.lora_targets import LORA_TARGETS

    source = training.base_model or PROFILE_BASES[training.profile]
    started = time.time()
    base = resolve_base(source, training.models_path() / "base")
    context.log.info(f"base model {source} -> {base.name_or_path} ({base.kind}, {time.time() - started:.1f}s)")
    path = Path(base.name_or_path)
    config = json.loads((path / "config.json").read_text()) if base.kind != "hub" else {}
    info = json.loads((path / BASE_INFO).read_text()) if (path / BASE_INFO).exists() else {}
    architecture = config.get("model_type", "phi3" if source == PROFILE_BASES["phi-4"] else "?")
    return dg.Output(
        {**base.as_dict(), "profile": training.profile, "architecture": architecture},
        metadata={
            "base_model": base.name_or_path,
            "source": source,
            "kind": base.kind,
            "source_sha256": base.sha256 or "",
            "architecture": architecture,
            "lora_target_modules": ", ".join(LORA_TARGETS.get(architecture, ["(set in the recipe)"])),
            **{k: info[k] for k in ("n_params", "seconds") if k in info},
            "resolve_seconds": round(time.time() - started, 1),
        },
    )


@dg.asset(group_name=GROUP, kinds={"pytorch"}, deps=["curated_datasets"], op_tags={"qeforge/stage": "training"})
def base_model(context: dg.AssetExecutionContext, training: TrainingSettings, curated_datasets: dict) -> dg.Output[dict]:
    """The model adapters are trained on: a pretrained one (Hub id, directory or GGUF), or the tiny Phi-3 built here."""
    if training.profile != "tiny":
        return _pretrained_base(context, training)
    from qeforge.training.base_model import build_tiny_base, corpus_from_datasets

    # Pretrained on every category's train split only: validation and test stay unseen.
    texts = corpus_from_datasets([Path(curated_datasets["path"]) / c for c in CATEGORIES], split="train")
    out = Path(training.base_model) if training.base_model else training.models_path() / "base" / "tiny-phi3"
    started = time.time()
    context.log.info(f"building the tiny Phi-3 base on {len(texts)} conversations ({training.base_pretrain_steps} steps)")
    path = build_tiny_base(texts, out, steps=training.base_pretrain_steps,
                           progress=lambda step, steps, loss: context.log.info(f"pretraining step {step}/{steps}, loss {loss:.3f}"))
    info = json.loads((path / "build_info.json").read_text()) if (path / "build_info.json").exists() else {}
    config = json.loads((path / "config.json").read_text())
    return dg.Output(
        {"name_or_path": str(path), "profile": "tiny", "dataset_version": curated_datasets["version"]},
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "architecture": config.get("architectures", ["?"])[0],
            "hidden_size": config["hidden_size"],
            "num_hidden_layers": config["num_hidden_layers"],
            "vocab_size": config["vocab_size"],
            "pretrain_texts": len(texts),
            "build_seconds": round(time.time() - started, 1),
            **{k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        },
    )


def _progress_callback(context: dg.AssetExecutionContext, category: str):
    """Trainer progress in the Dagster run log: every logging step and every evaluation."""
    from transformers import TrainerCallback

    class DagsterProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and ("loss" in logs or "eval_loss" in logs):
                shown = {k: round(v, 4) for k, v in logs.items() if k in ("loss", "eval_loss", "learning_rate")}
                context.log.info(f"{category}: step {state.global_step}/{state.max_steps} {shown}")

    return DagsterProgress()


def _recipe(training: TrainingSettings, category: str, base: dict, dataset_dir: Path, output_dir: Path):
    from qeforge.training.config import load_recipe
    from qeforge.training.recipes import recipe_path

    overrides = {
        "model_name_or_path": base["name_or_path"],
        "dataset_path": str(dataset_dir),
        "category": category,
        "output_dir": str(output_dir),
        "force": training.force,
        **training.recipe_overrides,
    }
    return load_recipe(recipe_path(training.profile, category), overrides=overrides)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
    partitions_def=category_partitions,
    op_tags={"qeforge/stage": "training"},
    check_specs=[
        dg.AssetCheckSpec(
            "adapter_beats_base_val_loss",
            asset="lora_adapter",
            description="The adapter's val loss is below its base model's on the same split",
        )
    ],
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    base_model: dict,
    curated_datasets: dict,
    training: TrainingSettings,
    mlflow: MLflowResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """A LoRA adapter (PEFT dir) for this category: trl SFT on train, best checkpoint by val loss."""
    from qeforge.training.sft import main as sft_main
    from qeforge.training.sft import resolved_recipe
    from qeforge.training.tracking import log_training_run, plot_loss_curves

    category = context.partition_key
    dataset_dir = Path(curated_datasets["path"]) / category
    output_dir = adapter_dir(training.adapters_path(), category, curated_datasets["version"])
    script_args, sft_config, model_config = _recipe(training, category, base_model, dataset_dir, output_dir)
    context.log.info(f"training {category} on {dataset_dir} -> {output_dir}")
    summary = sft_main(script_args, sft_config, model_config, callbacks=[_progress_callback(context, category)])

    run_id = recorded_run_id(output_dir) if summary.get("skipped") else None
    if run_id:
        context.log.info(f"unchanged dataset, recipe and base: reusing run {run_id}")
    else:
        plot = plot_loss_curves(summary, output_dir / "loss_curve.png")
        experiment = registered_model_name(category)  # one MLflow experiment per registered model
        with mlflow_retries():
            mlflow.experiment_id(experiment)  # creates it with the configured artifact location
            run_id = log_training_run(
                summary,
                resolved_recipe(script_args, sft_config, model_config),
                output_dir,
                plot,
                tracking_uri=mlflow.resolved_tracking_uri(),
                experiment_name=experiment,
                run_name=f"{category}-{curated_datasets['version']}",
                tags={"category": category, "dataset_version": curated_datasets["version"], "profile": training.profile},
            )
        write_run_record(output_dir, run_id, mlflow.resolved_tracking_uri())

    val_curve = summary.get("history", {}).get("eval", {})
    yield dg.Output(
        {
            "category": category,
            "adapter_dir": str(output_dir),
            "base_model": base_model["name_or_path"],
            "dataset_version": curated_datasets["version"],
            "mlflow_run_id": run_id,
            "train_loss": summary.get("train_loss"),
            "val_loss": summary.get("val_loss"),
            "base_val_loss": summary.get("base_val_loss"),
        },
        metadata={
            "adapter_dir": dg.MetadataValue.path(str(output_dir)),
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": mlflow.resolved_tracking_uri(),
            "skipped_unchanged": bool(summary.get("skipped")),
            "val_loss": float(summary["val_loss"]),
            "base_val_loss": float(summary["base_val_loss"]),
            "train_loss": float(summary.get("train_loss") or 0.0),
            "trainable_params": int(summary["trainable_params"]),
            "trainable_share": float(summary["trainable_params"] / summary["total_params"]),
            "tokens_per_second": float(summary.get("tokens_per_second") or 0.0),
            "wall_time_s": float(summary.get("wall_time_s") or 0.0),
            "adapter_size_bytes": int(summary["adapter_size_bytes"]),
            "loss_curve_png": dg.MetadataValue.path(str(output_dir / "loss_curve.png")),
            "val_loss_by_epoch": md_records(
                [{"step": s, "eval_loss": round(v, 4)} for s, v in zip(val_curve.get("step", []), val_curve.get("eval_loss", []))]
            ),
        },
    )
    gain = summary["base_val_loss"] - summary["val_loss"]
    yield dg.AssetCheckResult(
        check_name="adapter_beats_base_val_loss",
        passed=gain > 0,
        metadata={"val_loss": float(summary["val_loss"]), "base_val_loss": float(summary["base_val_loss"]), "gain": float(gain)},
    )
