"""The one request model inside the gateway, and the one answer model.

Each protocol layer (openai_api, anthropic_api, ollama_api) translates its request into a ChatCall
and a Completion back into its own shape; routing, batching, signals and limits see only these.

The conversation is kept in Anthropic's Messages shape (system apart; user/assistant turns whose
content is a string or a list of blocks: text, image, tool_use, tool_result, ...), because that is
what an escalation forwards to Claude: nothing the client sent is lost on the way. The local model
sees the text view of it (`local_messages`); a conversation that is more than text, or a request
for a feature local generation lacks, lists that feature in `needs_claude`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qeforge.evaluation.policy import jsonable

# Block types local generation reads as text; any other block makes the call need Claude.
TEXT_BLOCKS = ("text",)
# Block type -> the feature it needs (the reason an escalation names).
BLOCK_FEATURES = {"image": "images", "document": "documents", "tool_use": "tools", "tool_result": "tools",
                  "server_tool_use": "tools", "web_search_tool_result": "tools", "search_result": "documents"}
# Blocks a conversation may carry that local generation skips (the model's own earlier reasoning).
SKIPPED_BLOCKS = ("thinking", "redacted_thinking")


@dataclass
class ChatCall:
    protocol: str  # openai | anthropic | ollama
    model: str  # as the client named it
    system: str | list[dict]  # Anthropic's system: a string or text blocks (cache_control kept)
    messages: list[dict]  # Anthropic Messages turns
    max_tokens: int | None = None  # a ceiling: the local answer gets what room the context has
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)  # Anthropic tool definitions
    tool_choice: dict | None = None
    thinking: dict | None = None  # forwarded to Claude; the local model does not think aloud
    n: int = 1
    json_output: dict | None = None  # {"schema": ...|None}: the client asked for JSON (response_format, format)
    category: str | None = None  # the caller's hint: metadata.category or X-QEForge-Category
    stream: bool = False
    needs_claude: list[str] = field(default_factory=list)  # features local generation lacks

    def __post_init__(self):
        features = list(self.needs_claude)
        if self.tools:
            features.append("tools")
        if self.n > 1:
            features.append("n")
        if self.json_output is not None:
            features.append("response_format")
        for m in self.messages:
            for block in m["content"] if isinstance(m["content"], list) else ():
                kind = block.get("type")
                if kind not in TEXT_BLOCKS and kind not in SKIPPED_BLOCKS:
                    features.append(BLOCK_FEATURES.get(kind, kind))
        self.needs_claude = list(dict.fromkeys(features))  # each once, in order

    def system_text(self) -> str:
        return self.system if isinstance(self.system, str) else "\n\n".join(b.get("text", "") for b in self.system)

    def local_messages(self) -> list[dict]:
        """[{role, content: str}], system first: what the local chat template renders."""
        out = [{"role": "system", "content": self.system_text()}] if self.system_text() else []
        for m in self.messages:
            content = m["content"]
            if isinstance(content, list):
                content = "".join(b.get("text", "") for b in content if b.get("type") == "text")
            out.append({"role": m["role"], "content": content})
        return out


def text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def merge_turns(turns: list[dict]) -> list[dict]:
    """Consecutive turns of one role as one turn (Anthropic alternates roles), content as blocks."""
    out: list[dict] = []
    for t in turns:
        blocks = [text_block(t["content"])] if isinstance(t["content"], str) else list(t["content"])
        if out and out[-1]["role"] == t["role"]:
            out[-1]["content"] += blocks
        else:
            out.append({"role": t["role"], "content": blocks})
    for t in out:  # one text block reads as the plain string it was
        if len(t["content"]) == 1 and t["content"][0].get("type") == "text" and set(t["content"][0]) == {"type", "text"}:
            t["content"] = t["content"][0]["text"]
    return out


@dataclass
class Choice:
    """One answer: Anthropic content blocks (text, tool_use, thinking) and why it ended."""

    blocks: list[dict]
    finish: str  # stop | length | tool_calls
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(b["text"] for b in self.blocks if b.get("type") == "text")

    @property
    def tool_uses(self) -> list[dict]:
        return [b for b in self.blocks if b.get("type") == "tool_use"]


@dataclass
class Completion:
    """The gateway's answer to a ChatCall: who answered, why, and the answer itself."""

    choices: list[Choice]
    category: str  # one of the four, or "none"
    answered_by: str  # qeforge-<category>@<version>, or the Claude model
    decision: str  # local | escalated | local_fallback
    reason: str  # confident | not_confident | no_local_model | context_exceeded | truncated | unsupported:<feature>
    prompt_tokens: int
    completion_tokens: int
    adapter_version: str | None = None
    signal: str | None = None
    confidence: float | None = None
    threshold: float | None = None
    policy_version: str | None = None
    local_tokens: int = 0  # tokens the adapter generated (0 when Claude answered without a local pass)
    batch_rows: int = 0  # rows in the generation batch at the local answer's first step (0: no local pass)
    escalation_error: str | None = None
    exchange_id: str | None = None  # the recorded exchange's id, which POST /v1/feedback names; None: not recorded
    timings: dict = field(default_factory=dict)  # routing_s, queue_s, generate_s, escalation_s, engine_s

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def model(self) -> str:
        """The model name a response carries: the Claude model, or the category's registered name."""
        return self.answered_by if self.decision == "escalated" else self.answered_by.split("@")[0]

    def route(self) -> dict:
        return {"answered_by": self.answered_by, "decision": self.decision, "reason": self.reason,
                "category": self.category, "adapter_version": self.adapter_version, "signal": self.signal,
                "confidence": json_number(self.confidence), "threshold": json_number(self.threshold),
                "policy_version": self.policy_version, "exchange_id": self.exchange_id}

    def route_header(self) -> str:
        """X-QEForge-Route: who answered and why, on every response."""
        route = self.route()
        keys = ("answered_by", "decision", "reason", "category", "confidence", "threshold", "adapter_version", "exchange_id")
        return "; ".join(f"{k}={route[k] if route[k] is not None else 'none'}" for k in keys)

    def body_extra(self) -> dict:
        """The `qeforge` field a JSON response carries beside the protocol's own."""
        return {**self.route(), "escalation_error": self.escalation_error, "batch_rows": self.batch_rows,
                "timings_ms": {k.removesuffix("_s"): round(v * 1000, 4) for k, v in self.timings.items()}}


def json_number(x: float | None):
    """A reported number to 6 places, in the policy files' JSON convention (+-inf as "inf"/"-inf", nan as null)."""
    return None if x is None else jsonable(round(x, 6))


def tool_arguments(block: dict) -> str:
    return json.dumps(block.get("input", {}), ensure_ascii=False)


def pieces(text: str, size: int = 24) -> list[str]:
    """A decided answer cut into stream deltas (whole answer first: routing needs all of it)."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
