"""Batched greedy generation for evaluation (qeforge.evaluation.generate) on a SmolLM2-shaped llama:
left padding and length-sorted batches give the same answers as one prompt at a time, in order,
for the adapter and for the base (adapter disabled)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from tests.tiny_models import build_llama_base, random_llama_adapter  # noqa: E402

# Different prompt lengths on purpose: a batch of them is left-padded to the longest.
PROMPTS = [
    [{"role": "system", "content": "You write pytest tests."}, {"role": "user", "content": "def f1(x):\n    return x * 1"}],
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You review code."},
     {"role": "user", "content": "def f7(x):\n    return x * 7\nassert f7(2) == 14\nassert f7(3) == 21\nassert f7(4) == 28"}],
    [{"role": "user", "content": "def f2(x):"}],
    [{"role": "system", "content": "You classify flaky tests."}, {"role": "user", "content": "assert f3(2) == 6"}],
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from qeforge.evaluation.generate import load_adapter_model

    root = tmp_path_factory.mktemp("gen")
    base = build_llama_base(root)
    adapter = random_llama_adapter(base, root / "adapter", seed=3)
    return (*load_adapter_model(str(base), adapter), base)


@pytest.mark.slow
@pytest.mark.parametrize("use_adapter", [True, False])
def test_batched_left_padded_generation_matches_one_at_a_time(model_and_tokenizer, use_adapter):
    from qeforge.evaluation.generate import generate

    model, tok, _ = model_and_tokenizer
    assert tok.padding_side == "left" and model.generation_config.use_cache is not False  # KV cache on
    one = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=1, use_adapter=use_adapter)
    batched = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3, use_adapter=use_adapter)
    assert [g.text for g in batched] == [g.text for g in one]
    assert [(g.prompt_tokens, g.output_tokens) for g in batched] == [(g.prompt_tokens, g.output_tokens) for g in one]
    assert [g.mean_logprob for g in batched] == pytest.approx([g.mean_logprob for g in one], abs=1e-4)
    assert sum(g.output_tokens for g in one) > 2 * len(PROMPTS)  # real answers, not all an immediate stop
    lengths = [g.prompt_tokens for g in one]
    assert len(set(lengths)) == len(lengths)  # the prompts really differ in length, so padding happened


def test_base_generation_is_the_plain_base_and_differs_from_the_adapter(model_and_tokenizer):
    from transformers import AutoModelForCausalLM

    from qeforge.evaluation.generate import generate

    model, tok, base_dir = model_and_tokenizer
    adapter = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=5)
    base = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=5, use_adapter=False)
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = plain.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    assert base[0].text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert [g.text for g in adapter] != [g.text for g in base]
