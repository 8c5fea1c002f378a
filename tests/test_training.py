"""Training stack: recipes, tiny base, LoRA SFT (learns, adapter-only, resume, skip), tracking.

One tiny base model and one trained adapter are shared per module to keep the suite fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from qeforge.categories import CATEGORIES, SYSTEM_PROMPTS  # noqa: E402
from qeforge.training.config import RecipeError, load_recipe  # noqa: E402
from qeforge.training.recipes import RECIPES_DIR, recipe_path  # noqa: E402

CATEGORY = "test-generation"
OPS = [("add", "+"), ("sub", "-"), ("mul", "*")]


def _example(category: str, i: int, rng: random.Random) -> dict:
    """A templated, learnable QE exchange: the answer follows from the prompt."""
    name, op = OPS[i % 3]
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    fn = f"{name}_{i % 7}"
    user = f"def {fn}(a, b):\n    return a {op} b\n# inputs: {a}, {b}"
    answer = f"def test_{fn}():\n    assert {fn}({a}, {b}) == {eval(f'{a}{op}{b}')}"
    return {
        "id": f"{category}-{i}",
        "category": category,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPTS[category]},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        "quality": 1.0,
        "model": "fixture",
        "group": f"g{i % 4}",
        "metadata": json.dumps({"i": i}),
    }


def make_dataset(category: str, n_train: int = 48, n_val: int = 16, n_test: int = 8, seed: int = 0):
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    rows = [_example(category, i, rng) for i in range(n_train + n_val + n_test)]
    splits = {"train": rows[:n_train], "validation": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}
    return DatasetDict({k: Dataset.from_list(v) if v else Dataset.from_list(rows[:1]).select([]) for k, v in splits.items()})


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("datasets") / CATEGORY
    make_dataset(CATEGORY).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages(m) for c in CATEGORIES for m in make_dataset(c, 24, 0, 0, seed=1)["train"]["messages"]]
    # Few steps on purpose: a weak-but-real base that the adapter can measurably improve.
    return build_tiny_base(texts, tmp_path_factory.mktemp("base"), steps=20, batch_size=8, block_size=128)


def tiny_args(base, dataset, out, **overrides):
    values = dict(model_name_or_path=str(base), dataset_path=str(dataset), category=CATEGORY,
                  output_dir=str(out), max_length=256, disable_tqdm=True, learning_rate=3e-3)
    values.update(overrides)
    return load_recipe(recipe_path("tiny", CATEGORY), overrides=values)


@pytest.fixture(scope="module")
def trained(tiny_base, dataset_dir, tmp_path_factory):
    from qeforge.training.sft import main

    out = tmp_path_factory.mktemp("adapter")
    args = tiny_args(tiny_base, dataset_dir, out)
    return args, main(*args), out


# --- recipes -------------------------------------------------------------------------------------


def test_every_recipe_parses_and_phi4_targets_the_fused_modules():
    import torch

    paths = sorted(RECIPES_DIR.rglob("*.yaml"))
    assert {p.name for p in paths} >= {f"config_{c}.yaml" for c in CATEGORIES} | {"config_cpu.yaml"}
    # bf16 recipes only validate on a bf16 device; on CPU the rest of the recipe is still checked.
    cpu = {} if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else {"bf16": False}
    for category in CATEGORIES:
        assert recipe_path("tiny", category).is_file()
        script, train, model = load_recipe(recipe_path("phi-4", category), overrides=cpu)
        assert model.model_name_or_path == "microsoft/phi-4" and model.dtype == "bfloat16"
        assert model.use_peft and (model.lora_r, model.lora_alpha, model.lora_dropout) == (16, 32, 0.1)
        assert model.lora_target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        assert train.per_device_train_batch_size * train.gradient_accumulation_steps == 16
        assert train.assistant_only_loss and train.load_best_model_at_end and train.gradient_checkpointing
        assert train.learning_rate == 2e-4 and train.num_train_epochs == 3 and script.category == category
    load_recipe(recipe_path("tiny", CATEGORY))


def test_unknown_recipe_field_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe_path("tiny", CATEGORY).read_text() + "lora_rank: 8\nwarmup_ratio: 0.1\n")
    with pytest.raises(RecipeError, match="lora_rank") as err:
        load_recipe(bad)
    assert "warmup_ratio" in str(err.value)


def test_recipe_path_rejects_unknown_category():
    with pytest.raises(ValueError):
        recipe_path("tiny", "no-such-category")


# --- errors before training ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["tiny", "smol", "phi-4"])
def test_a_recipe_run_without_its_output_dir_is_refused(profile):
    """Every recipe's output_dir is a placeholder; left unset it must not train into the current directory."""
    from qeforge.training.sft import main

    cpu = {"bf16": False}  # phi-4's bf16 only validates on a bf16 GPU; the output_dir check comes first anyway
    with pytest.raises(RecipeError, match="adapters/<category>/<version>"):
        main(*load_recipe(recipe_path(profile, CATEGORY), overrides=cpu))


@pytest.mark.slow
def test_empty_train_split_is_rejected(tiny_base, tmp_path):
    from qeforge.training.sft import main

    ds = tmp_path / "empty"
    make_dataset(CATEGORY, n_train=0).save_to_disk(str(ds))
    with pytest.raises(RecipeError, match="train"):
        main(*tiny_args(tiny_base, ds, tmp_path / "out"))
    with pytest.raises(RecipeError, match="not a directory"):
        main(*tiny_args(tiny_base, tmp_path / "missing", tmp_path / "out"))


@pytest.mark.slow
def test_missing_target_module_lists_available(tiny_base, dataset_dir, tmp_path):
    from qeforge.training.sft import main

    args = tiny_args(tiny_base, dataset_dir, tmp_path / "out", lora_target_modules=["q_proj", "qkv_proj"])
    with pytest.raises(RecipeError, match="q_proj") as err:
        main(*args)
    assert "gate_up_proj" in str(err.value) and "o_proj" in str(err.value)
    assert not (tmp_path / "out").exists()  # failed before any training output


# --- the base model and packing --------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_base_is_phi3_with_fused_modules_and_chat_template(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} <= names
    assert model.config.model_type == "phi3"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    out = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(marked) == "ok<|end|>\n<|endoftext|>"  # content + stop tokens, nothing of the prompt
    assert tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True).endswith("<|assistant|>\n")


@pytest.mark.slow
def test_padding_free_packing_does_not_cross_contaminate(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    a, b = list(range(5, 25)), list(range(30, 45))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": a}, {"input_ids": b}])
    with torch.no_grad():
        # use_cache=False as trl's compute_loss sets it: only then do position_ids yield a block-diagonal mask.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits
    assert torch.allclose(packed[0, len(a):], alone[0], atol=1e-4)


# --- SFT -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_adapter_beats_base_on_validation(trained):
    _, summary, _ = trained
    assert summary["finished"] and not summary["skipped"]
    assert summary["val_loss"] < summary["base_val_loss"]
    assert 0 < summary["trainable_params"] < summary["total_params"]
    hist = summary["history"]["train"]
    assert len(hist["loss"]) == summary["global_step"] == len(hist["learning_rate"])
    assert len(summary["history"]["eval"]["eval_loss"]) == 2  # one eval per epoch


@pytest.mark.slow
def test_output_is_adapter_only_and_changes_logits(trained, tiny_base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, summary, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "training_summary.json"]
    assert summary["adapter_size_bytes"] < (tiny_base / "model.safetensors").stat().st_size
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out)).eval()
        assert not torch.allclose(tuned(ids).logits, base_logits)


@pytest.mark.slow
def test_same_inputs_skip_training(trained, tiny_base, dataset_dir, tmp_path):
    from qeforge.training.sft import main

    _, first, out = trained
    copy = shutil.copytree(out, tmp_path / "adapter")  # the module's adapter stays as trained
    again = main(*tiny_args(tiny_base, dataset_dir, copy))
    assert again["skipped"] is True and again["fingerprint"] == first["fingerprint"]


@pytest.mark.slow
def test_force_retrains_on_the_same_inputs(trained, tiny_base, dataset_dir, tmp_path):
    from qeforge.training.sft import main

    _, first, out = trained
    copy = shutil.copytree(out, tmp_path / "adapter")
    forced = main(*tiny_args(tiny_base, dataset_dir, copy, force=True))
    assert (forced["skipped"], forced["fingerprint"], forced["resumed_from"]) == (False, first["fingerprint"], None)


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tiny_base, dataset_dir, tmp_path):
    from transformers import TrainerCallback

    from qeforge.training.sft import main

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # checkpoint-2 is on disk by now
                raise KeyboardInterrupt("simulated preemption")

    steps = dict(max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main(*tiny_args(tiny_base, dataset_dir, out, **steps), callbacks=[Crash()])
    assert (out / "checkpoint-2").is_dir() and not (out / "training_summary.json").exists()

    summary = main(*tiny_args(tiny_base, dataset_dir, out, **steps))
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4
    assert summary["history"]["train"]["step"] == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint's state
    assert not list(out.glob("checkpoint-*"))


# --- tracking ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_log_training_run_to_mlflow(trained, tmp_path):
    from mlflow import MlflowClient

    from qeforge.training.tracking import log_training_run, plot_loss_curves

    _, summary, out = trained
    plot = plot_loss_curves(summary, tmp_path / "loss.png")
    assert plot.stat().st_size > 1000
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_training_run(summary, summary["recipe"], out, plot, tracking_uri=uri, experiment_name="sft-test",
                              run_name=CATEGORY, tags={"category": CATEGORY},
                              artifact_location=str(tmp_path / "artifacts"))
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["lora_r"] == "16" and run.data.params["dataset_hash"] == summary["dataset_hash"]
    assert run.data.tags["category"] == CATEGORY and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "loss")) == summary["global_step"]
    assert {a.path for a in client.list_artifacts(run_id, "adapter")} >= {"adapter/adapter_model.safetensors"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]


@pytest.mark.slow
def test_tiny_base_build_is_deterministic_and_skips_when_unchanged(tmp_path):
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages(m) for m in make_dataset(CATEGORY, 16, 0, 0)["train"]["messages"]]
    size = dict(steps=2, hidden_size=32, num_layers=1, block_size=64, batch_size=2, vocab_size=512)
    a = build_tiny_base(texts, tmp_path / "a", seed=3, **size)
    b = build_tiny_base(texts, tmp_path / "b", seed=3, **size)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    build_tiny_base(texts, a, seed=3, **size)  # same fingerprint: nothing rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
