"""bench.gpu_phi4's CPU dry run: the Phi-4 device script on the tiny Phi-3 shape, so it cannot rot while
no GPU is lent. It runs as the device command does (`python -m bench.gpu_phi4`), so stdout must be the
JSON alone."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_phi4 import CONCURRENCY, SHAPES

ROOT = Path(__file__).resolve().parents[1]


def _numbers(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


@pytest.mark.slow  # two LoRA runs and four served adapters: 21 s to 2.5 min on 2 cores, by their load
def test_tiny_dry_run():
    from qeforge.training.recipes import recipe_path
    from qeforge.training.config import load_recipe

    done = subprocess.run([sys.executable, "-m", "bench.gpu_phi4", "--config", "tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    modes = [(t["mode"], t["activation_checkpointing"]) for t in result["train"]]
    assert modes == [("lora", True), ("lora", False), ("qlora", True)]
    # QLoRA runs where bitsandbytes is installed (the device wheels carry it; the project does not need it)
    assert ("skipped" in result["train"][2]) == (importlib.util.find_spec("bitsandbytes") is None)
    trained = [t for t in result["train"] if "skipped" not in t]
    for part in (*trained, result["generate"]):
        assert "error" not in part, part
        assert all(math.isfinite(x) and x > 0 for x in _numbers(part)), part

    lora = load_recipe(recipe_path("phi-4", "test-generation"), overrides={"bf16": False})[2]
    m = SHAPES["tiny"]["model"]
    kv = 2 * m["num_key_value_heads"] * m["hidden_size"] // m["num_attention_heads"]
    d, ff = m["hidden_size"], m["intermediate_size"]
    # LoRA r on a d_in -> d_out module adds r * (d_in + d_out): qkv_proj, o_proj, gate_up_proj, down_proj
    lora_params = lora.lora_r * ((d + d + kv) + (d + d) + (d + 2 * ff) + (ff + d)) * m["num_hidden_layers"]
    for t in trained:
        assert t["lora_modules"] == sorted(lora.lora_target_modules)
        assert (t["lora_r"], t["lora_alpha"]) == (lora.lora_r, lora.lora_alpha)
        assert t["trainable_params"] == lora_params
        assert t["timed_steps"] == SHAPES["tiny"]["train"]["steps"] - 1

    generate = result["generate"]
    assert [g["rows"] for g in generate["concurrency"]] == list(CONCURRENCY)
    for g in generate["concurrency"]:
        assert g["output_tokens"] == g["rows"] * generate["new_tokens"]  # no stop token: every row runs to the end
