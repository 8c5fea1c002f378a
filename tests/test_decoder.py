"""The lean decoder (serving/decoder.py) answers as transformers + peft does: greedy tokens identical on
mixed-adapter batches for both architectures it knows, logits within tolerance; a decoder that differs
is refused, and a model it does not know runs on transformers' forward."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tiny_models import build_base, build_llama_base, random_adapter, random_llama_adapter

ADAPTERS = ["test-generation", "coverage-analysis", "flaky-detection", "code-review"]
TEXTS = ["def add(a, b):\n    return a + b", "def f(x):\n    return x * 3", "def is_even(n):\n    return n % 2 == 0",
         "def test_sleep():\n    time.sleep(1)\n    assert fetch()", "- return items[0]\n+ return items[1]",
         "def mean(xs):\n    return sum(xs) / len(xs)", "Which lines are not covered?", "Is this test flaky?"]
NEW = 12


def peft_model(base, adapter_dirs: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from qeforge.serving.backends import with_adapters

    return with_adapters(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter_dirs)


@pytest.fixture(scope="module", params=["phi3", "llama"])
def built(request, tmp_path_factory):
    """A tiny base of each architecture with four random adapters (one of another rank)."""
    from transformers import AutoTokenizer

    from bench.adapters import random_lora
    from qeforge.training.lora_targets import LORA_TARGETS

    root = tmp_path_factory.mktemp(request.param)
    if request.param == "phi3":
        base = build_base(root)
        dirs = {c: random_adapter(base, root / c, 10 + i) for i, c in enumerate(ADAPTERS[:3])}
    else:
        base = build_llama_base(root)
        dirs = {c: random_llama_adapter(base, root / c, 10 + i) for i, c in enumerate(ADAPTERS[:3])}
    dirs[ADAPTERS[3]] = random_lora(base, root / ADAPTERS[3], 99, targets=LORA_TARGETS[request.param], r=2, scale=0.5)
    return SimpleNamespace(base=base, dirs=dirs, tokenizer=AutoTokenizer.from_pretrained(base))


def prompts(tokenizer, n: int) -> list[list[int]]:
    """n chat prompts of different lengths (so batched rows are left-padded)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": TEXTS[i % len(TEXTS)] + " #" * (i % 5)}],
                                          add_generation_prompt=True, tokenize=True, return_dict=False)
            for i in range(n)]


def reference_greedy(model, adapter: str | None, ids: list[int], stops) -> list[int]:
    """One prompt alone through transformers + peft's forward: the answer the lean path must give."""
    from qeforge.serving.backends import peft_forward

    tokens, past = [], None
    step, mask = np.array([ids]), np.ones((1, len(ids)), np.int64)
    while len(tokens) < NEW:
        logits, past = peft_forward(model, [adapter], step, mask, past)
        tokens.append(int(logits.argmax(-1)[0]))
        if tokens[-1] in stops:
            break
        step, mask = np.array([[tokens[-1]]]), np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
    return tokens


def batched(backend, tokenizer, cases: list[tuple[str | None, list[int]]], max_batch: int) -> list[list[int]]:
    from qeforge.evaluation.generate import stop_token_ids
    from qeforge.serving.batching import Batcher, GenerationRequest

    stops = tuple(stop_token_ids(tokenizer))
    state = SimpleNamespace(backend=backend, tokenizer=tokenizer, stops=stops, pad_id=tokenizer.pad_token_id or stops[0])
    requests = [GenerationRequest(a, ids, NEW, (), state) for a, ids in cases]
    Batcher(max_batch=max_batch, thread=False).run(requests)
    return [r.future.result().tokens for r in requests]


def test_greedy_answers_match_transformers_on_mixed_adapter_batches(built):
    """32 prompts over the four adapters plus 8 on the base alone: batches of 6 rows, so rows join,
    leave and are cropped mid-batch, each row's tokens equal to its answer generated alone."""
    from qeforge.evaluation.generate import stop_token_ids
    from qeforge.serving.backends import TorchBackend

    model = peft_model(built.base, built.dirs)
    backend = TorchBackend(model, list(built.dirs))
    assert backend.path == "lean"
    ids = prompts(built.tokenizer, 40)
    cases = [(ADAPTERS[i % 4] if i < 32 else None, p) for i, p in enumerate(ids)]
    stops = stop_token_ids(built.tokenizer)
    expected = [reference_greedy(model, a, p, stops) for a, p in cases]
    assert len({tuple(e) for e in expected}) > len(TEXTS)  # the adapters change the answers
    assert batched(backend, built.tokenizer, cases, max_batch=6) == expected


def test_parity_check_refuses_a_decoder_whose_logits_differ(built):
    from qeforge.serving.backends import lean_parity
    from qeforge.serving.decoder import LeanDecoder

    model = peft_model(built.base, built.dirs)
    decoder = LeanDecoder(model, list(built.dirs))
    assert lean_parity(model, decoder, list(built.dirs))["passed"]
    import torch
    from peft.tuners.lora import LoraLayer

    lora = next(m for m in model.modules() if isinstance(m, LoraLayer))
    with torch.no_grad():  # the model's adapter changes under the decoder: its stacked copy is stale
        lora.lora_B[ADAPTERS[0]].weight += 0.5
    report = lean_parity(model, decoder, list(built.dirs))
    assert not report["passed"] and report["max_abs_diff"] > report["atol"]


def test_what_the_decoder_does_not_know_runs_on_transformers(built, tmp_path):
    """Another architecture (Qwen2): the backend says why and answers on transformers + peft, as the
    reference does. DoRA and sliding windows are refused with their reasons."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from bench.adapters import random_lora
    from qeforge.evaluation.generate import stop_token_ids
    from qeforge.serving.backends import TorchBackend
    from qeforge.serving.decoder import unsupported

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(built.tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    qwen.save_pretrained(tmp_path / "qwen")
    dirs = {c: random_lora(tmp_path / "qwen", tmp_path / c, i, targets=["q_proj", "v_proj"], r=4, scale=0.5)
            for i, c in enumerate(ADAPTERS[:2])}
    model = peft_model(tmp_path / "qwen", dirs)
    backend = TorchBackend(model, list(dirs))
    assert backend.decoder is None and "qwen2" in backend.path
    with pytest.raises(ValueError, match="int8 weights run on the lean decoder.*qwen2"):
        TorchBackend(model, list(dirs), weights="int8")  # asked-for int8 never silently runs in fp32
    cases = [(ADAPTERS[i % 2], p) for i, p in enumerate(prompts(built.tokenizer, 4))]
    stops = stop_token_ids(built.tokenizer)
    assert batched(backend, built.tokenizer, cases, max_batch=4) == [reference_greedy(model, a, p, stops) for a, p in cases]

    base = AutoModelForCausalLM.from_pretrained(built.base)
    dora = get_peft_model(base, LoraConfig(r=4, target_modules=["o_proj"], use_dora=True))
    assert "DoRA" in unsupported(dora)
    base.config.sliding_window = 8
    assert "sliding-window" in unsupported(base)


def test_int8_weights_quarter_the_bytes_stay_close_and_batch_consistently(built):
    """Weight-only int8 (backend "torch-int8"): each linear's int8 copy is a quarter of its fp32 bytes;
    logits stay near the model's own (the quantization error, bounded here, measured on SmolLM2 in
    bench/lean_decoder.py); and a row's answer is the same in a mixed-adapter batch as alone."""
    import torch

    from qeforge.serving.backends import TorchBackend, peft_forward

    model = peft_model(built.base, built.dirs)
    backend = TorchBackend(model, list(built.dirs), weights="int8")
    assert backend.path == "lean-int8" and backend.decoder.weights == "int8"
    for linear in backend.decoder.fused_linears():
        q, scale = linear.int8
        assert q.dtype == torch.int8 and q.shape == linear.weight.shape and linear.packed is None
        assert q.numel() == linear.weight.numel() and scale.dtype == torch.bfloat16
        used = linear.weight.abs().amax(1) > 0
        assert (q.abs().amax(1)[used] >= 126).all()  # each column's largest weight uses the full range
    adapters = list(built.dirs)
    ids = np.arange(3, 3 + 9 * len(adapters)).reshape(len(adapters), 9)
    ref = peft_forward(model, adapters, ids, np.ones_like(ids), None)[0]
    got = backend.decoder.forward(adapters, ids, np.ones_like(ids), None)[0]
    error = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    # 0 would mean nothing was quantized. The tiny models measure 1-6% here (per row 1-13%: the r=2
    # adapter's B ~ N(0, 0.5^2) on a 64-wide model moves with its seed); a wrong scale would be ~100%.
    assert 0 < error < 0.15, error
    ids = prompts(built.tokenizer, 12)
    cases = [(ADAPTERS[i % 4], p) for i, p in enumerate(ids)]
    alone = [batched(backend, built.tokenizer, [c], max_batch=1)[0] for c in cases]
    assert batched(backend, built.tokenizer, cases, max_batch=6) == alone


def test_int8_refuses_widths_its_kernel_cannot_read(built):
    """torch's int8 kernel reads input features in blocks of 16 and crashes on others: refused first."""
    from qeforge.serving.decoder import LeanDecoder

    decoder = LeanDecoder(peft_model(built.base, built.dirs), list(built.dirs))
    decoder.layers[0]["down"].weight = decoder.layers[0]["down"].weight[:, :-3]  # as a width of in - 3 would be
    with pytest.raises(ValueError, match="multiples of 16"):
        decoder.quantize_int8()
    assert decoder.weights == "model" and decoder.lm_head.int8 is None  # nothing half-quantized


def compiled_and_python(decoder, compiled, rows, token, mask, cache):
    """One step of `rows` on the compiled step and, from a copy of the cache, on the Python step:
    (compiled logits, its cache, Python logits, the copy)."""
    twin = type(cache)([k.clone() for k in cache.keys], [v.clone() for v in cache.values], cache.length)
    decoder.step = compiled
    got, cache = decoder.forward(rows, token, mask, cache)
    decoder.step = None
    want, twin = decoder.forward(rows, token, mask, twin)
    return got, cache, want, twin


@pytest.mark.parametrize("weights", ["model", "int8"])
@pytest.mark.parametrize("rows", [[ADAPTERS[2]], [ADAPTERS[0], None, ADAPTERS[3]], [*ADAPTERS, None, ADAPTERS[1]]],
                         ids=["one-row", "three-mixed", "six-mixed"])
def test_compiled_step_equals_the_python_step(built, weights, rows):
    """decode_step.cpp (one-token steps) against decoder.py's Python step on the same decoder: one row,
    and mixed adapters with the base alone (up to 4 rows the step runs its own GEMV in one parallel
    region, beyond on oneDNN op by op), left-padded rows, a cache cropped on the left (non-contiguous
    views); logits and written keys/values agree to float reassociation, and the argmax everywhere."""
    import torch

    from qeforge.serving.decoder import LeanDecoder

    decoder = LeanDecoder(peft_model(built.base, built.dirs), list(built.dirs))
    if weights == "int8":
        decoder.quantize_int8()
    assert decoder.step is not None, decoder.step_reason  # this machine builds it (a C++ compiler and ninja)
    compiled = decoder.step
    rng = np.random.default_rng(3)
    lengths = [4 + 2 * i for i in range(len(rows))]
    ids = np.zeros((len(rows), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, -n:], mask[i, -n:] = rng.integers(0, len(built.tokenizer), n), 1
    _, cache = decoder.forward(rows, ids, mask, None)  # the prefill: Python either way
    cache = cache.crop_left(2)
    mask = mask[:, 2:]
    for step in range(3):
        token = rng.integers(0, len(built.tokenizer), (len(rows), 1))
        mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], 1)
        got, cache, want, twin = compiled_and_python(decoder, compiled, rows, token, mask, cache)
        # fp32: sums in another order. int8: the kernel rounds its input to bf16 (2^-8 relative), and a
        # reassociated activation can round the other way, so its logits move by up to ~1e-2 of scale.
        bound = (1e-4 if weights == "model" else 2e-2) * np.abs(want).max()
        assert np.abs(got - want).max() <= bound, (step, np.abs(got - want).max(), bound)
        top2 = np.sort(want, -1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * bound  # where no such difference could swap the top two
        assert (got.argmax(-1) == want.argmax(-1))[clear].all() and (weights == "int8" or clear.all())
        end = cache.length
        for a, b in zip(cache.keys + cache.values, twin.keys + twin.values):
            torch.testing.assert_close(a[:, :, :end], b[:, :, :end], rtol=1e-4 if weights == "model" else 2e-2,
                                       atol=1e-5 if weights == "model" else 1e-2)


def test_without_the_compiled_step_steps_run_in_python_and_the_path_says_why(built, monkeypatch):
    """No C++ compiler (or no ninja): the gateway still answers, the same tokens, and /health's
    `generation` names the reason."""
    from qeforge.evaluation.generate import stop_token_ids
    from qeforge.serving import decoder as decoder_module
    from qeforge.serving.backends import TorchBackend

    def no_compiler():
        raise RuntimeError("Error building extension: c++: not found")

    model = peft_model(built.base, built.dirs)
    with_step = TorchBackend(model, list(built.dirs))
    monkeypatch.setattr(decoder_module, "decode_step_module", no_compiler)
    backend = TorchBackend(model, list(built.dirs))
    assert backend.decoder.step is None and with_step.decoder.step is not None
    assert backend.path == "lean (one-token steps in Python: the C++ step did not build: Error building extension: c++: not found)"
    cases = [(ADAPTERS[i % 4], p) for i, p in enumerate(prompts(built.tokenizer, 6))]
    stops = stop_token_ids(built.tokenizer)
    assert batched(backend, built.tokenizer, cases, max_batch=3) == [reference_greedy(model, a, p, stops) for a, p in cases]


def test_compiled_step_on_widths_that_are_not_multiples_of_16(tmp_path):
    """The one-row GEMV reads 16 floats at a time with a masked tail, and its output tiles are 8 wide:
    hidden 40, head_dim 10 and an MLP of 72 exercise both tails; logits equal the Python step's, one row
    and mixed rows, over several steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.adapters import random_lora
    from qeforge.serving.decoder import LeanDecoder
    from qeforge.training.lora_targets import LORA_TARGETS

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
                     ).save_pretrained(tmp_path / "base")

    dirs = {c: random_lora(tmp_path / "base", tmp_path / c, i, targets=LORA_TARGETS["llama"], r=3, scale=0.5)
            for i, c in enumerate(ADAPTERS[:2])}
    decoder = LeanDecoder(peft_model(tmp_path / "base", dirs), list(dirs))
    assert decoder.step is not None, decoder.step_reason
    compiled = decoder.step
    for rows in ([ADAPTERS[1]], [ADAPTERS[0], None, ADAPTERS[1]]):
        rng = np.random.default_rng(len(rows))
        ids = rng.integers(0, 300, (len(rows), 7))
        mask = np.ones_like(ids)
        _, cache = decoder.forward(rows, ids, mask, None)
        for _ in range(4):
            token = rng.integers(0, 300, (len(rows), 1))
            mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], 1)
            got, cache, want, _ = compiled_and_python(decoder, compiled, rows, token, mask, cache)
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
