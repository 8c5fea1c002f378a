"""Claude, where the local side cannot answer well: the client's own request, forwarded.

The call is already in Anthropic's shape (chat.ChatCall), so forwarding is one messages.create with
the client's system, turns, temperature, stop sequences, tools and thinking. The anthropic SDK reads
ANTHROPIC_API_KEY and honours ANTHROPIC_BASE_URL (tests point it at a stand-in on loopback).
"""

from __future__ import annotations

import json
from typing import Protocol

from qeforge.serving.chat import ChatCall, Choice

DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-5"
# Claude needs a max_tokens; an OpenAI or Ollama client may send none. 4096 is what agentic-qe's
# largest call asks for.
DEFAULT_ESCALATION_MAX_TOKENS = 4096
# Anthropic's stop_reason -> the finish the other protocols name.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "stop"}
KEPT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")


class Escalation(Protocol):
    def complete(self, call: ChatCall, model: str) -> tuple[list[Choice], dict]:
        """(one Choice per call.n, {"input_tokens", "output_tokens"} summed)."""


def json_instruction(json_output: dict) -> str:
    """response_format / format as Claude reads it: an instruction (the Messages API has no such field)."""
    schema = json_output.get("schema")
    text = "Respond with a single valid JSON value and nothing else."
    return text + (f" It must match this JSON schema:\n{json.dumps(schema)}" if schema else "")


def messages_create_kwargs(call: ChatCall, model: str) -> dict:
    """The client's request as Anthropic's messages.create arguments."""
    system = call.system
    if call.json_output is not None:
        instruction = json_instruction(call.json_output)
        system = f"{system}\n\n{instruction}".strip() if isinstance(system, str) else [*system, {"type": "text", "text": instruction}]
    kw = {"model": model, "max_tokens": call.max_tokens or DEFAULT_ESCALATION_MAX_TOKENS, "messages": call.messages}
    optional = {"system": system, "stop_sequences": call.stop, "tools": call.tools, "tool_choice": call.tool_choice,
                "thinking": call.thinking}
    kw.update({k: v for k, v in optional.items() if v not in (None, "", [])})
    # anthropic 1.0 took temperature and top_p out of create()'s signature (deprecated: models after
    # Opus 4.6 refuse values other than the default). They go on the wire as the client sent them,
    # through extra_body, so Claude sees the client's own request; a model that refuses them refuses
    # the client's request as it would have directly.
    sampling = {k: v for k, v in (("temperature", call.temperature), ("top_p", call.top_p)) if v is not None}
    if sampling:
        kw["extra_body"] = sampling
    return kw


class ClaudeEscalation:
    """The real escalation client: anthropic.Anthropic().messages.create, once per choice asked for."""

    def __init__(self, client=None):
        import anthropic

        self.client = client or anthropic.Anthropic()

    def complete(self, call: ChatCall, model: str) -> tuple[list[Choice], dict]:
        choices, usage = [], {"input_tokens": 0, "output_tokens": 0}
        for _ in range(call.n):
            reply = self.client.messages.create(**messages_create_kwargs(call, model))
            blocks = [b.model_dump(exclude_none=True) for b in reply.content if b.type in KEPT_BLOCKS]
            choices.append(Choice(blocks, FINISH.get(reply.stop_reason, "stop"), getattr(reply, "stop_sequence", None)))
            for k in usage:
                usage[k] += int(getattr(reply.usage, k, 0) or 0)
        return choices, usage
