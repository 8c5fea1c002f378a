"""LoRA SFT of one category, in the spirit of trl/scripts/sft.py.

    python -m qeforge.training.sft --config recipes/phi-4/sft/config_code-review.yaml \
        --dataset_path <datasets_dir>/<version>/code-review --output_dir <models_dir>/adapters/code-review/<version>
    accelerate launch -m qeforge.training.sft --config ...

output_dir ends up holding adapter_config.json + adapter_model.safetensors (never base
weights) and training_summary.json; checkpoint-* dirs exist only while a run is unfinished,
and the next call with the same inputs resumes from the last one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .base_sources import base_provenance
from .config import RecipeError

SUMMARY = "training_summary.json"
RUN_STATE = "run_state.json"  # present while a run is unfinished: its fingerprint + base val loss
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Fields that name where things go, not what is trained: excluded from the fingerprint.
_VOLATILE = {"output_dir", "logging_dir", "run_name", "report_to", "resume_from_checkpoint", "force",
             "dataset_path", "disable_tqdm", "hub_token", "push_to_hub"}


def resolved_recipe(script_args, training_args, model_args) -> dict[str, Any]:
    """All three argument sets as one flat JSON-safe dict (what MLflow logs as params)."""
    from dataclasses import asdict

    merged = {**training_args.to_dict(), **asdict(model_args), **asdict(script_args)}
    return json.loads(json.dumps(merged, default=str))


def dataset_hash(dsd) -> str:
    """Content hash of the train/validation/test rows (independent of how the files were written)."""
    h = hashlib.sha256()
    for split in sorted(dsd):
        h.update(split.encode())
        for batch in dsd[split].iter(batch_size=1000):
            h.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _base_model_stamp(name: str) -> str:
    """The base model's identity: the hub id, or for a local dir its config and weight files."""
    p = Path(name)
    if not p.is_dir():
        return name
    h = hashlib.sha256(name.encode())
    for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
        h.update(f.name.encode())
        # Tiny bases are hashed whole; for a local 28 GB phi-4 the name and size stand in.
        h.update(f.read_bytes() if f.stat().st_size < 64 << 20 else str(f.stat().st_size).encode())
    return h.hexdigest()


def _load_splits(script_args):
    from datasets import load_from_disk

    path = Path(script_args.dataset_path or "")
    if not script_args.dataset_path or not path.is_dir():
        raise RecipeError(f"dataset_path {str(path)!r} is not a directory; point it at <datasets_dir>/<version>/<category>")
    try:
        dsd = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any load failure means the same fix
        raise RecipeError(f"dataset_path {path} is not a saved DatasetDict: {e}") from e
    for split in ("train", "validation"):
        if split not in dsd or len(dsd[split]) == 0:
            raise RecipeError(f"dataset {path}: split {split!r} is missing or empty; re-run curation for this category")
        if "messages" not in dsd[split].column_names:
            raise RecipeError(f"dataset {path}: split {split!r} has no 'messages' column")
    return dsd


def _check_model(model_args, training_args) -> None:
    """Fail before loading weights: LoRA required, and its target modules must exist (meta-device model).

    Unset lora_target_modules are chosen for the architecture (qeforge.training.lora_targets) and
    written back into model_args, so the resolved recipe records them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .lora_targets import lora_targets

    if not model_args.use_peft:
        raise RecipeError("use_peft must be true: this stack trains one LoRA adapter per category")
    targets = model_args.lora_target_modules
    if isinstance(targets, str):  # "all-linear": peft resolves it
        return
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                        trust_remote_code=training_args.trust_remote_code)
    if targets is None:
        try:
            targets = model_args.lora_target_modules = lora_targets(config.model_type)
        except KeyError as e:
            raise RecipeError(f"{model_args.model_name_or_path}: {e.args[0]}") from e
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=training_args.trust_remote_code)
    available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if t not in available]
    if missing:
        raise RecipeError(f"lora_target_modules {missing} not in {model_args.model_name_or_path}; "
                          f"its linear modules are {available}")


def _training_tokenizer(model_args, training_args):
    """The base tokenizer; with assistant_only_loss, its own chat template plus {% generation %} markers."""
    from transformers import AutoTokenizer

    from .chat_template import TemplateError, training_template

    tok = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                        trust_remote_code=training_args.trust_remote_code)
    if training_args.assistant_only_loss:
        try:
            tok.chat_template = training_template(tok)
        except TemplateError as e:
            raise RecipeError(str(e)) from e
    return tok


def _history(log_history: list[dict]) -> dict[str, dict[str, list]]:
    train = {k: [] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second")}
    evals = {k: [] for k in ("step", "epoch", "eval_loss")}
    for row in log_history:
        if "loss" in row:
            for k in train:
                train[k].append(row.get(k))
        elif "eval_loss" in row:
            for k in evals:
                evals[k].append(row.get(k))
    return {"train": train, "eval": evals}


def _throughput_callback():
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        """Adds tokens_per_second to each training log row, from trl's cumulative num_tokens.
        Written into state.log_history, so it survives checkpoint/resume with the rest."""

        def __init__(self):
            self.last = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = state.log_history[-1] if state.log_history else {}
            if "loss" not in row or "num_tokens" not in row:
                return
            now, tokens = time.perf_counter(), row["num_tokens"]
            if self.last is not None and tokens >= self.last[1] and now > self.last[0]:
                row["tokens_per_second"] = round((tokens - self.last[1]) / (now - self.last[0]), 1)
            self.last = (now, tokens)

    return Throughput()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_output_dir(training_args) -> None:
    if Path(training_args.output_dir or "").name.startswith("PLACEHOLDER"):
        raise RecipeError(f"output_dir is the recipe's {training_args.output_dir!r}: set it to "
                          "<models_dir>/adapters/<category>/<version>")


def _fingerprint(ds_hash: str, recipe: dict, base: str) -> str:
    """What a finished run is recognised by: the data, the recipe less where things go, the base's files."""
    identity = {k: v for k, v in recipe.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps({"dataset": ds_hash, "recipe": identity, "base": _base_model_stamp(base)},
                                     sort_keys=True).encode()).hexdigest()


def _start_or_resume(out: Path, fingerprint: str, force: bool, dist) -> tuple[str | None, dict]:
    """(the checkpoint to resume from, the run state); marks output_dir as holding an unfinished run."""
    from transformers.trainer_utils import get_last_checkpoint

    state = _read_json(out / RUN_STATE)
    resume = get_last_checkpoint(str(out)) if out.is_dir() else None
    if force or not state or state.get("fingerprint") != fingerprint:
        # Nothing resumable: a forced rerun, or checkpoints of different inputs.
        resume, state = None, {"fingerprint": fingerprint}
        if dist.is_main_process:
            for ckpt in out.glob("checkpoint-*"):
                shutil.rmtree(ckpt)
    if dist.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY).unlink(missing_ok=True)  # an interrupted run must not look finished
        (out / RUN_STATE).write_text(json.dumps(state))
    dist.wait_for_everyone()
    return resume, state


def _trainer(dsd, training_args, model_args, *, model, callbacks):
    """trl's SFTTrainer with a LoRA config from the recipe; it loads the base from model_init_kwargs."""
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    # A copy, because the trainer mutates its args and the caller's must keep fingerprinting the same.
    training_args = copy.deepcopy(training_args)
    if model is None:
        training_args.model_init_kwargs = {
            "revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code,
            "attn_implementation": model_args.attn_implementation, "dtype": model_args.dtype,
            **(training_args.model_init_kwargs or {}),
        }
    # Only `messages` feeds the model; the other columns (id, quality, metadata...) are provenance.
    return SFTTrainer(
        model=model_args.model_name_or_path if model is None else model,
        args=training_args,
        train_dataset=dsd["train"].select_columns(["messages"]),
        eval_dataset=dsd["validation"].select_columns(["messages"]),
        processing_class=_training_tokenizer(model_args, training_args),
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=[_throughput_callback(), *(callbacks or [])],
    )


def _record_base_val_loss(trainer, state: dict, out: Path, dist) -> None:
    """The base's loss on the same packed, assistant-masked validation split, once per run (a resumed
    run keeps it). LoRA B starts at zero, but disabling the adapter makes "base" explicit."""
    if "base_val_loss" in state:
        return
    with trainer.model.disable_adapter():
        state["base_val_loss"] = trainer.evaluate(metric_key_prefix="base")["base_loss"]
    if dist.is_main_process:
        (out / RUN_STATE).write_text(json.dumps(state))


def _save_adapter(trainer, out: Path, dist) -> None:
    """Adapter only: peft writes adapter_config.json + adapter_model.safetensors (+ a README we drop)."""
    if dist.is_main_process:
        trainer.model.save_pretrained(str(out))
        (out / "README.md").unlink(missing_ok=True)
        for ckpt in out.glob("checkpoint-*"):
            shutil.rmtree(ckpt)
    dist.wait_for_everyone()


def _measured(trainer, result, out: Path) -> dict[str, Any]:
    """What the run measured: steps, losses, parameter counts, throughput, the adapter's size, the log."""
    history = _history(trainer.state.log_history)
    runtime = result.metrics.get("train_runtime")
    tokens = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r]
    counted = bool(tokens and runtime)
    return {
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "final_train_loss": history["train"]["loss"][-1] if history["train"]["loss"] else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in trainer.model.parameters()),
        "train_tokens": tokens[-1] if counted else None,
        "tokens_per_second": round(tokens[-1] / runtime, 1) if counted else None,
        "train_runtime_s": runtime,
        "adapter_size_bytes": sum((out / f).stat().st_size for f in ADAPTER_FILES),
        "history": history,
    }


def main(script_args, training_args, model_args, *, callbacks=None, model=None) -> dict[str, Any]:
    """Train (or resume, or skip) one category's adapter; returns the training summary.

    `model`: the base already in memory (bench.gpu_phi4 builds Phi-4's shape with random weights on
    the GPU); model_name_or_path then names the directory of its config and tokenizer only."""
    from accelerate import PartialState

    t0 = time.perf_counter()
    _check_output_dir(training_args)
    dsd = _load_splits(script_args)
    _check_model(model_args, training_args)
    recipe = resolved_recipe(script_args, training_args, model_args)
    ds_hash = dataset_hash(dsd)
    fingerprint = _fingerprint(ds_hash, recipe, model_args.model_name_or_path)

    out = Path(training_args.output_dir)
    done = _read_json(out / SUMMARY)
    if done and done.get("finished") and done.get("fingerprint") == fingerprint and not script_args.force:
        return {**done, "skipped": True}

    dist = PartialState()  # under `accelerate launch` every rank runs this; only the main one writes
    resume, state = _start_or_resume(out, fingerprint, script_args.force, dist)
    trainer = _trainer(dsd, training_args, model_args, model=model, callbacks=callbacks)
    _record_base_val_loss(trainer, state, out, dist)
    result = trainer.train(resume_from_checkpoint=resume)
    best = trainer.state.best_metric  # eval_loss of the checkpoint load_best_model_at_end restored
    val_loss = best if best is not None else trainer.evaluate()["eval_loss"]
    _save_adapter(trainer, out, dist)

    summary = {
        "finished": True,
        "skipped": False,
        "fingerprint": fingerprint,
        "category": script_args.category,
        "base_model": model_args.model_name_or_path,
        **base_provenance(model_args.model_name_or_path),  # GGUF file and sha256, for a GGUF base
        "dataset_path": str(script_args.dataset_path),
        "dataset_hash": ds_hash,
        "n_train": len(dsd["train"]),
        "n_validation": len(dsd["validation"]),
        "resumed_from": Path(resume).name if resume else None,
        "val_loss": val_loss,
        "base_val_loss": state["base_val_loss"],
        **_measured(trainer, result, out),
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "recipe": recipe,
    }
    if dist.is_main_process:
        (out / SUMMARY).write_text(json.dumps(summary, indent=1, default=str))
        (out / RUN_STATE).unlink(missing_ok=True)
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """TrlParser route (`--config recipe.yaml` plus `--field value` overrides), keys checked first."""
    from trl import TrlParser

    from .config import _dataclass_types, read_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        read_recipe(argv[argv.index("--config") + 1])  # RecipeError naming unknown fields
    parser = TrlParser(_dataclass_types())
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    return main(script_args, training_args, model_args)


if __name__ == "__main__":
    summary = cli()
    print(json.dumps({k: summary[k] for k in ("category", "skipped", "val_loss", "base_val_loss", "wall_time_s")}))
