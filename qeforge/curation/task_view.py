"""What dedup embeds of a long task: the instruction plus the head and tail of its context.

all-MiniLM-L6-v2 reads at most `max_seq_length` = 256 word pieces and drops the rest. QE tasks are
prose around fenced code: "Write tests for `withdraw`" + a 300-line class, or "Which lines does this
test miss?" + a function + a test. Truncated, two tasks that share the class or the function embed
the same shared head, cosine ~1, although they ask different things (the issue that motivated this:
class-level tasks on different methods, one function with different tests).

The view keeps what tells such tasks apart:
- the instruction (the prose outside code fences), up to a third of the budget, head and tail when
  longer, since the question is often its last sentence;
- the rest of the budget split between the head of the context (what it is) and its tail (where
  a second snippet, e.g. the given test, ends).
Budget: 256 - 2 ([CLS], [SEP]) = 254 pieces -> at most 84 for the instruction, the rest (167 when the
instruction is long, less the one-piece `|` markers) for the head and tail of the context.

Chunk-and-pool (mean of chunk embeddings) was the alternative; averaging a long shared context with
a short different question pulls both tasks to the same mean, which is the failure we are fixing.
A task that fits is embedded whole, so short tasks (most of them) are unchanged.

Measured on a 587-piece task (a 50-line class, then "Write a unittest suite for the `deposit` method"
vs "... the `transfer` method"): cosine 1.000 truncated, 0.964 as views. Views alone still sit near
the 0.95 threshold when only a sentence differs, which is why dedup also compares the answers.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
SPECIAL_TOKENS = 2  # [CLS] and [SEP]
MARK = "|"  # one word piece between the parts the view keeps


def split_instruction(task: str) -> tuple[str, str]:
    """(prose outside code fences, the fenced code joined)."""
    code = "\n".join(m.group(1) for m in _FENCE.finditer(task))
    prose = " ".join(_FENCE.sub(" ", task).split())
    return prose, code


def _head_tail(pieces: list[str], budget: int) -> list[str]:
    if len(pieces) <= budget:
        return pieces
    head = (budget + 1) // 2
    return pieces[:head] + [MARK] + pieces[len(pieces) - (budget - head):]


def task_view(task: str, tokenizer, max_seq_length: int = 256) -> str:
    """The task itself when it fits the encoder, else instruction + head and tail of the context."""
    budget = max_seq_length - SPECIAL_TOKENS
    if len(tokenizer.tokenize(task)) <= budget:
        return task
    prose, code = split_instruction(task)
    if not code:  # all prose: its own head and tail
        return tokenizer.convert_tokens_to_string(_head_tail(tokenizer.tokenize(prose), budget - 1))
    instruction = _head_tail(tokenizer.tokenize(prose), budget // 3)
    # 254 - (84 + 1 marker) for the instruction - 1 marker between the parts - 1 inside the context = 167.
    context_budget = budget - len(instruction) - 2
    context = _head_tail(tokenizer.tokenize(code), context_budget)
    return tokenizer.convert_tokens_to_string(instruction) + f" {MARK} " + tokenizer.convert_tokens_to_string(context)
