"""Any model's own chat template, with {% generation %} markers added around the assistant turns.

trl's `assistant_only_loss` builds its loss mask from `{% generation %}...{% endgeneration %}`,
which neither SmolLM2's ChatML template nor microsoft/phi-4's `<|im_sep|>` template has (and trl
1.16 cannot patch phi-4's). Rather than rewrite each template by hand, the original template
becomes a Jinja macro and the wrapper renders it on growing prefixes of the conversation:

    delta(i)  = original(messages[:i+1]) minus original(messages[:i])     (a message's own text)
    header(i) = original(messages[:i], add_generation_prompt=True) minus original(messages[:i])

A user or system turn emits delta(i); an assistant turn emits header(i), then the rest of
delta(i) (content plus end-of-turn text such as `<|im_end|>\n`) inside the generation block, so
the model is trained to stop. This is exact for any template whose rendering of a prefix is a
prefix of the whole ("prefix-preserving", which ChatML and Phi-3/4 are); `training_template`
checks that the wrapper renders the same text as the original and refuses otherwise. Each turn
costs three renders of a prefix: O(n^2) for n turns, a few dozen renders for our 3-turn chats.
"""

from __future__ import annotations

from trl.chat_template_utils import has_generation_markers

_WRAPPER = (
    "{%- macro qeforge_original(messages, add_generation_prompt) %}{ORIGINAL}{% endmacro -%}"
    "{%- for message in messages -%}"
    "{%- set before = qeforge_original(messages[:loop.index0], false) -%}"
    "{%- set through = qeforge_original(messages[:loop.index], false) -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set header = qeforge_original(messages[:loop.index0], true) -%}"
    "{{- header[before|length:] -}}"
    "{%- generation -%}{{- through[header|length:] -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- through[before|length:] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- set body = qeforge_original(messages, false) -%}"
    "{{- qeforge_original(messages, true)[body|length:] -}}"
    "{%- endif -%}"
)

# Probe conversations for the equality check: system-first and user-first, two exchanges, and
# contents with Jinja-ish and newline characters that a careless rewrite would mangle.
_PROBES = [
    [{"role": "system", "content": "You review code."}, {"role": "user", "content": "def f():\n    pass"},
     {"role": "assistant", "content": "Looks {{ fine }}."}, {"role": "user", "content": "Sure?"},
     {"role": "assistant", "content": "Yes.\n"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
]


class TemplateError(ValueError):
    """The model's chat template cannot be given generation markers by prefix rendering."""


def add_generation_markers(template: str) -> str:
    """The wrapper around `template` (see the module docstring); no check, see `training_template`."""
    return _WRAPPER.replace("{ORIGINAL}", template)


def training_template(tokenizer) -> str:
    """The tokenizer's own template with generation markers, checked to render identical text.

    A template that already has markers is returned unchanged."""
    original = tokenizer.chat_template
    if not original:
        raise TemplateError(f"{tokenizer.name_or_path}: the tokenizer has no chat template")
    if has_generation_markers(original):
        return original
    wrapped = add_generation_markers(original)
    for messages in _PROBES:
        for add_prompt, convo in ((False, messages), (True, messages[:-1])):
            want = tokenizer.apply_chat_template(convo, chat_template=original, tokenize=False,
                                                 add_generation_prompt=add_prompt)
            got = tokenizer.apply_chat_template(convo, chat_template=wrapped, tokenize=False,
                                                add_generation_prompt=add_prompt)
            if got != want:
                raise TemplateError(
                    f"{tokenizer.name_or_path}: its chat template is not prefix-preserving, so generation "
                    f"markers cannot be added generically ({want[:80]!r}... vs {got[:80]!r}...); give the "
                    "tokenizer a template with {% generation %} markers, or set assistant_only_loss: false")
    return wrapped
