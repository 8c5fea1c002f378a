"""Tiny Phi-3 bases and LoRA adapters for tests: seconds to build, distinct answers per adapter."""

from __future__ import annotations

from pathlib import Path

from bench.adapters import random_lora

LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def build_base(root: Path) -> Path:
    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.training.base_model import build_tiny_base
    from qeforge.training.tokenizer import render_messages

    texts = [render_messages([{"role": "system", "content": SYSTEM_PROMPTS[c]},
                              {"role": "user", "content": f"def f{i}(x):\n    return x * {i}"},
                              {"role": "assistant", "content": f"def test_f{i}():\n    assert f{i}(2) == {2 * i}"}])
             for i in range(40) for c in SYSTEM_PROMPTS]
    return build_tiny_base(texts, root / "base", steps=10, vocab_size=400, hidden_size=32, num_layers=1,
                           num_heads=2, block_size=64, batch_size=4)


def random_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter whose lora_B weights are random: each seed answers differently."""
    return random_lora(base, out, seed, targets=LORA_TARGETS, r=4, scale=0.5)


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def build_llama_base(root: Path, seed: int = 0) -> Path:
    """A SmolLM2-shaped LlamaForCausalLM (grouped KV heads, tied embeddings), hidden 64, 2 layers,
    with a small byte-level BPE and a ChatML template: the smol profile's layout in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qeforge.categories import SYSTEM_PROMPTS
    from qeforge.training.tokenizer import train_tokenizer

    texts = [f"{SYSTEM_PROMPTS[c]}\ndef f{i}(x):\n    return x * {i}\nassert f{i}(2) == {2 * i}"
             for i in range(30) for c in SYSTEM_PROMPTS]
    tok = train_tokenizer(texts, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    out = root / "llama-base"
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_llama_adapter(base: Path, out: Path, seed: int) -> Path:
    """LoRA r=8 on the 7 llama modules with random lora_B, so it changes the answers."""
    from qeforge.training.lora_targets import LORA_TARGETS as BY_ARCH

    return random_lora(base, out, seed, targets=BY_ARCH["llama"], r=8, scale=0.3)


def chat_call(model: str, messages: list[dict], **fields):
    """An OpenAI-shaped chat request as the gateway's ChatCall: what tests hand Engine.complete."""
    from qeforge.serving.openai_api import chat_call as from_openai

    return from_openai({"model": model, "messages": messages, **fields})
