"""A small byte-level BPE tokenizer in Phi-3 style, plus its training chat template.

The template wraps the assistant turn (content + end-of-turn token) in
{% generation %}...{% endgeneration %}: trl's `assistant_only_loss=True` builds its loss mask
from those markers, and putting the end-of-turn token inside teaches the model to stop.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Phi-3 layout (same text as trl's phi3_training.jinja), with generation markers.
PHI3_TRAINING_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}{%- generation %}{{- message['content'] + '<|end|>\n' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}"
    "{%- elif messages[-1]['role'] == 'assistant' %}{%- generation %}{{- eos_token }}{%- endgeneration %}"
    "{%- else %}{{- eos_token }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """Train a byte-level BPE on `texts`; returns a transformers.PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte level: every string is encodable (no <unk>), and decoding round-trips exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,  # Phi-3 style: pad = eos; padded positions are masked out of the loss anyway
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=1024,
    )
    fast.chat_template = PHI3_TRAINING_CHAT_TEMPLATE
    return fast


def render_messages(messages: list[dict]) -> str:
    """The text PHI3_TRAINING_CHAT_TEMPLATE renders for a full conversation, without Jinja:
    used to build the pretraining corpus before any tokenizer exists."""
    body = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return body + EOS
