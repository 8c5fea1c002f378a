"""The format check: which of agentic-qe's own prompts demand a format, and which answers parse as it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serving import artefacts  # noqa: F401 (fixture)
from tiny_models import chat_call

from qeforge.serving import anthropic_api, ollama_api, openai_api
from qeforge.serving.formats import parses, required_format

FIXTURES = Path(__file__).parent / "fixtures" / "agentic-qe-3.14-llm-requests"
CALLS = {"/v1/chat/completions": openai_api.chat_call, "/v1/messages": anthropic_api.messages_call,
         "/api/chat": ollama_api.chat_call}


def test_the_fleets_prompts_demand_what_their_callers_parse():
    demanded = {}
    for path in sorted(FIXTURES.glob("*.json")):
        recorded = json.loads(path.read_text())
        if recorded["path"] in CALLS:
            demanded[path.stem] = required_format(CALLS[recorded["path"]](recorded["body"]))
    # fixtures/README.md, "what it expects back": the quality-gate verdicts (097, 142, 157), graph
    # extraction (108), quality insights (121), defect risk (122) and root cause (123) parse JSON; the
    # free-tier writer (162) one fenced block. Test enhancement (004, 138, 153) says "Return ONLY the
    # enhanced test code" (no fence demanded), the preflight (096, 141, 156) "Reply with exactly: OK",
    # the advisor (180) prose.
    assert demanded == {"004": None, "096": None, "097": "json", "108": "json", "121": "json", "122": "json",
                        "123": "json", "138": None, "141": None, "142": "json", "153": None, "156": None,
                        "157": "json", "162": "code_block", "180": None}


def test_json_output_demands_json_and_a_json_sample_in_the_prompt_does_not():
    asked = chat_call("qeforge", [{"role": "user", "content": "List the risks."}], response_format={"type": "json_object"})
    assert required_format(asked) == "json"
    sample = "## Context\n```json\n{\"file\": \"src/calc.py\"}\n```\nExplain the failure."
    assert required_format(chat_call("qeforge", [{"role": "user", "content": sample}])) is None
    # The demand is read from the turn being answered, not from an earlier one.
    turns = [{"role": "user", "content": "Return a JSON object."}, {"role": "assistant", "content": "{}"},
             {"role": "user", "content": "Now explain it in a sentence."}]
    assert required_format(chat_call("qeforge", turns)) is None


@pytest.mark.parametrize("text, usable", [
    ('{"unmet": [2, 4]}', True),
    ('  [1, 2]\n', True),
    ('```json\n{"unmet": []}\n```', True),
    ('```\n{"unmet": []}\n```', True),  # an unlabelled fence around JSON: agentic-qe strips it
    ('```python\n{"unmet": []}\n```', False),  # a fence labelled as something else
    ('{"unmet": [2]}\nI hope this helps!', False),  # trailing prose
    ('Here is the result: {"unmet": [2]}', False),  # leading prose
    ('{"unmet": [2, 4', False),  # truncated
    ('```json\n{"unmet": [2]}', False),  # fence never closed
    ("{'unmet': [2]}", False),  # Python's repr, not JSON
    ('"unmet"', False), ("42", False), ("", False),  # JSON, but no structure to read fields from
    ('```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```', False),  # two blocks
])
def test_json_parses_only_a_whole_object_or_array(text, usable):
    assert parses("json", text) is usable


@pytest.mark.parametrize("text, usable", [
    ("```python\ndef test_add():\n    assert add(1, 2) == 3\n```", True),
    ("```\nassert True\n```\n", True),
    ("Here are the tests:\n```python\nassert True\n```", False),  # prose before
    ("```python\nassert True\n```\nThese cover add.", False),  # prose after
    ("```python\nassert True\n", False),  # truncated: never closed
    ("```python\na = 1\n```\n```python\nb = 2\n```", False),  # two blocks
    ("```python assert True```", False),  # code on the fence line
    ("def test_add():\n    assert add(1, 2) == 3", False),  # no fence at all
])
def test_code_block_parses_exactly_one_closed_fence(text, usable):
    assert parses("code_block", text) is usable


def test_an_unknown_format_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="unknown format"):
        parses("yaml", "a: 1")


@pytest.mark.slow
def test_a_confident_local_answer_that_does_not_parse_is_not_returned_as_confident(artefacts):
    from test_serving import make_engine, policy

    from qeforge.serving.engine import Declined

    engine = make_engine(artefacts, policy(), fallback="local")  # threshold -inf: any finished answer is confident

    def finishing(content: str):
        """The call with a stop string from its own greedy answer's middle: it finishes ("stop"), not "truncated"."""
        text = engine.complete(chat_call("qeforge-test-generation", [{"role": "user", "content": content}], max_tokens=30)).text
        stop = next(text[i:i + 2] for i in range(len(text) // 2, len(text) - 1) if not any(ch.isspace() for ch in text[i:i + 2]))
        return chat_call("qeforge-test-generation", [{"role": "user", "content": content}], max_tokens=30, stop=[stop])

    # The tiny adapter's greedy answers, cut at a stop string so they finish: to a plain prompt it is
    # confident; to one demanding JSON the same kind of text cannot be used.
    plain_call, demanding = finishing("def add(a, b):\n    return a + b"), finishing("Return a JSON object.")
    engine.fallback = "decline"
    plain = engine.complete(plain_call)
    assert (plain.decision, plain.reason, plain.choices[0].finish) == ("local", "confident", "stop")
    with pytest.raises(Declined) as declined:  # no Claude and fallback "decline": a 503 naming the reason
        engine.complete(demanding)
    assert declined.value.reason == "unparseable:json"
    engine.fallback = "local"  # without Claude, fallback "local" still answers, marked as what it is
    marked = engine.complete(demanding)
    assert (marked.decision, marked.reason, marked.choices[0].finish) == ("local_fallback", "unparseable:json", "stop")
    assert not parses("json", marked.text)
