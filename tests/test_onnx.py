"""ONNX Runtime path: export of base + merged adapter, parity with PyTorch, greedy generation."""

import hashlib
import json

import pytest

from bench.adapters import random_lora
from tiny_models import LORA_TARGETS

pytestmark = pytest.mark.slow  # builds tiny models and exports them

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

LORA = {"targets": LORA_TARGETS, "r": 8, "scale": 0.1}
TEXTS = [
    "<|user|>\nWrite pytest tests for add(a, b).<|end|>\n"
    "<|assistant|>\ndef test_add():\n    assert add(1, 2) == 3<|end|>\n",
    "<|user|>\nIs test_login flaky?<|end|>\n"
    "<|assistant|>\nYes: it sleeps instead of waiting for the page.<|end|>\n",
    "Coverage of parse_date misses the branch for invalid months; add a test for month 13.",
] * 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from qeforge.training.base_model import build_tiny_base

    out = tmp_path_factory.mktemp("base")
    # hidden 64, 2 layers, 4 heads, vocab <= 512 (BPE stops early on so little text); 5 steps
    # are enough: parity and generation only need a deterministic model, not a good one.
    build_tiny_base(TEXTS, out, steps=5, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                    block_size=64, batch_size=4)
    return str(out)


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return random_lora(base, root / "a", 1, **LORA), random_lora(base, root / "b", 2, **LORA)


@pytest.fixture(scope="module")
def exported(base, adapters, tmp_path_factory):
    from qeforge.serving.onnx_runtime import export_merged

    return export_merged(base, adapters[0], tmp_path_factory.mktemp("onnx") / "a")


def test_export_writes_graph_tokenizer_and_info_and_skips_when_unchanged(base, adapters, exported):
    from qeforge.serving.onnx_runtime import export_merged

    info = json.loads((exported / "export_info.json").read_text())
    sha = hashlib.sha256((adapters[0] / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert info["adapter_sha256"] == sha and info["base"] == base and info["opset"] >= 18
    assert {"torch", "onnx"} <= set(info["versions"])
    assert (exported / "tokenizer.json").exists()

    mtime = (exported / "model.onnx").stat().st_mtime_ns
    assert export_merged(base, adapters[0], exported) == exported
    assert (exported / "model.onnx").stat().st_mtime_ns == mtime


def test_parity_passes_and_the_adapter_changes_the_logits(base, adapters, exported):
    from transformers import AutoModelForCausalLM

    from qeforge.serving.onnx_runtime import _load_merged, check_parity

    report = check_parity(base, adapters[0], exported, atol=1e-3)
    assert report["passed"], report
    assert report["max_abs_diff"] < 1e-3 and report["argmax_agreement"] == 1.0 and report["atol"] == 1e-3

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        merged = _load_merged(base, adapters[0])(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=ids).logits
    assert (merged - plain).abs().max() > 0.1  # far above atol: a lost merge cannot pass


def test_parity_fails_against_a_different_adapter(base, adapters, exported):
    from qeforge.serving.onnx_runtime import check_parity

    report = check_parity(base, adapters[1], exported)
    assert report["passed"] is False and report["max_abs_diff"] > 1e-3


def test_generate_matches_torch_greedy_and_stops_on_stop_ids(base, adapters, exported):
    from transformers import AutoTokenizer

    from qeforge.serving.onnx_runtime import OnnxCausalLM, _load_merged

    tok = AutoTokenizer.from_pretrained(base)
    prompt = tok("<|user|>\nWrite pytest tests for add(a, b).<|end|>\n")["input_ids"]
    n = 16
    with torch.inference_mode():
        out = _load_merged(base, adapters[0]).generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
            output_logits=True, return_dict_in_generate=True)
    want = out.sequences[0, len(prompt):].tolist()
    want_lp = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, want)]

    lm = OnnxCausalLM(exported, intra_op_threads=1)
    tokens, logprobs = lm.generate(prompt, max_new_tokens=n, stop_ids=[])
    assert tokens == want
    assert logprobs == pytest.approx(want_lp, abs=1e-4)

    stop = tokens[n // 2]
    tokens2, logprobs2 = lm.generate(prompt, max_new_tokens=n, stop_ids=[stop])
    assert tokens2 == tokens[: tokens.index(stop) + 1] and len(logprobs2) == len(tokens2)


def test_llama_with_grouped_kv_heads_exports_with_parity(tmp_path):
    """The smol profile's architecture: LlamaForCausalLM, 2 KV heads for 4 query heads, tied
    embeddings, LoRA on all 7 linear modules; parity through the cache path as for Phi-3."""
    from qeforge.serving.onnx_runtime import OnnxCausalLM, check_parity, export_merged
    from tests.tiny_models import build_llama_base, random_llama_adapter

    base = build_llama_base(tmp_path)
    adapter = random_llama_adapter(base, tmp_path / "adapter", seed=1)
    out = export_merged(str(base), adapter, tmp_path / "onnx")
    report = check_parity(str(base), adapter, out, atol=1e-3)
    assert report["passed"] and report["argmax_agreement"] == 1.0, report
    kv = [i for i in OnnxCausalLM(out).session.get_inputs() if i.name == "past_key_values.0.key"][0]
    assert kv.shape[1] == 2 and kv.shape[3] == 16  # grouped KV heads x head_dim 64/4 in the graph
