"""Answers that must be usable, not only likely: the format a call demands, and whether an answer has it.

The fleet's prompts name the shape they parse (tests/fixtures/agentic-qe-3.14-llm-requests): "Your
response MUST be valid JSON with this exact structure" (121), "Return ONLY a single JSON object ... of
the form {"unmet": [...]}" (097), "Respond in JSON format" (122), "Output ONLY a single fenced code
block" (162). A local answer that does not parse is worse than an escalation, however confident the
adapter is, so the engine escalates it as `unparseable:<format>`. Pure functions, no model.
"""

from __future__ import annotations

import json
import re

from qeforge.serving.chat import ChatCall

FORMATS = ("json", "code_block")
# A verb asking for output, then the format within the same clause (40 characters, no full stop or
# newline between): "Return a JSON object", "Respond in JSON format", "Return your analysis as JSON",
# "response MUST be valid JSON". A JSON sample inside the prompt (```json) names no verb, so it demands nothing.
_ASK = r"\b(?:return|respond|reply|answer|output|response)\b[^.\n]{0,40}?"
DEMANDS = {
    "json": re.compile(_ASK + r"\bJSON\b", re.IGNORECASE),
    "code_block": re.compile(_ASK + r"\bcode\s+block\b", re.IGNORECASE),
}
# A whole answer that is one fenced block: ``` and an optional label on their own line, the body, ```.
FENCE = re.compile(r"\A```([\w+#.-]*)[ \t]*\n(.*?)\n?```\Z", re.DOTALL)
JSON_LABELS = ("", "json")


def demand_text(call: ChatCall) -> str:
    """Where a demand is written: the system text and the last user turn (what this answer replies to)."""
    last = next((m["content"] for m in reversed(call.local_messages()) if m["role"] == "user"), "")
    return f"{call.system_text()}\n{last}"


def required_format(call: ChatCall) -> str | None:
    """The format the answer must have: "json" when the client set json_output (response_format,
    Ollama's format) or the prompt asks for JSON, else "code_block" when it asks for a code block, else None.
    JSON first: a prompt asking for JSON "in a code block" is parsed as JSON by its caller."""
    if call.json_output is not None:
        return "json"
    text = demand_text(call)
    return next((f for f in FORMATS if DEMANDS[f].search(text)), None)


def parses(format: str, text: str) -> bool:
    """Whether `text` is usable as `format`, with nothing around it: json is one JSON object or array,
    bare or as the only content of a ```json (or unlabelled) fence, since agentic-qe's parsers read
    either (123: "a fenced JSON block or raw JSON"); code_block is exactly one closed fence, any label."""
    text = text.strip()
    if format == "code_block":
        fence = FENCE.match(text)
        return fence is not None and "```" not in fence.group(2)
    if format != "json":
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    fence = FENCE.match(text)
    if fence is not None:
        if fence.group(1).lower() not in JSON_LABELS:
            return False
        text = fence.group(2).strip()
    try:
        value = json.loads(text)
    except ValueError:  # truncated, trailing prose, single quotes, ...
        return False
    return isinstance(value, (dict, list))
