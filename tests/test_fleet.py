"""The simulated fleet sends what agentic-qe 3.14 sends: its templates and request shapes are held to the
recorded fixtures, and a pass through the gateway (stand-in Claude on loopback) is recorded so that the
traffic report shows the same local share the pass saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serving import artefacts, policy  # noqa: F401 (fixtures)

from qeforge.fleet import (DEFECT_RISK_REQUEST, DEFECT_RISK_SYSTEM, PREFLIGHT, TEST_ENHANCEMENT_REQUIREMENTS,
                           TEST_ENHANCEMENT_SYSTEM, fleet_calls)
from qeforge.serving.formats import parses, required_format

FIXTURES = Path(__file__).parent / "fixtures" / "agentic-qe-3.14-llm-requests"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_the_templates_are_agentic_qes_own():
    enhancement, risk, preflight = (fixture(n)["body"]["messages"] for n in ("004", "122", "096"))
    assert enhancement[0]["content"] == TEST_ENHANCEMENT_SYSTEM
    assert enhancement[1]["content"].startswith("## Source Code to Test:\n```typescript\n")
    assert enhancement[1]["content"].endswith(TEST_ENHANCEMENT_REQUIREMENTS)
    assert risk[0]["content"] == DEFECT_RISK_SYSTEM and risk[1]["content"].endswith(DEFECT_RISK_REQUEST)
    assert preflight == [{"role": "user", "content": PREFLIGHT}]


def test_calls_take_the_providers_request_shapes_and_answers_their_format():
    calls = fleet_calls(3)
    assert [c.category for c in calls[:4]] == ["test-generation", "coverage-analysis", "flaky-detection", "code-review"]
    openai, ollama = fixture("004")["body"], fixture("138")["body"]
    for call in calls:
        reference = openai if call.path == "/v1/chat/completions" else ollama
        assert set(call.body) == set(reference), call.path
        if call.path == "/api/chat":
            assert set(call.body["options"]) == set(reference["options"]) and call.body["stream"] is False
    assert {c.path for c in calls} == {"/v1/chat/completions", "/api/chat"}
    # What the defect-risk prompt demands, the stand-in Claude's answer is.
    from tiny_models import chat_call

    for call in (c for c in calls if c.category == "code-review"):
        assert required_format(chat_call("qeforge", call.body["messages"])) == "json"
        assert parses("json", call.claude_answer)
    assert fleet_calls(3) == calls and fleet_calls(3, seed=1) != calls  # deterministic, and a new seed is new work


@pytest.mark.slow
def test_a_pass_is_recorded_and_the_report_shows_what_the_pass_saw(artefacts, tmp_path):
    import dataclasses

    import anthropic

    from pipelines.resources import ServingSettings
    from qeforge import store
    from qeforge.main_job import _fleet_pass
    from qeforge.fleet import stand_in_claude
    from qeforge.serving.background import BackgroundServer
    from qeforge.serving.escalation import ClaudeEscalation
    from qeforge.serving.source import DirectorySource
    from qeforge.evaluation.routing import Prices
    from qeforge.traffic import read_exchanges, traffic_report

    db = store.connect(str(tmp_path / "lancedb"))
    calls = fleet_calls(2)
    with BackgroundServer(stand_in_claude(calls)) as claude:
        source = DirectorySource(artefacts["base"], artefacts["adapters"], policy())
        settings = ServingSettings().settings(source, models_dir=tmp_path, classifier_path=None, db=db)
        escalation = ClaudeEscalation(anthropic.Anthropic(api_key="stand-in", base_url=claude.url, max_retries=0))
        shares = _fleet_pass(dataclasses.replace(settings, escalation=escalation), calls, "simulated-fleet/test")
    rows = read_exchanges(db)
    assert len(rows) == len(calls) and {r["caller"] for r in rows} == {"simulated-fleet/test"}
    # No classifier here: every call is "none" to the router and Claude's (stand-in) answer comes back.
    escalated = [r for r in db.open_table("exchanges").to_arrow().to_pylist() if r["decision"] == "escalated"]
    assert {r["answer"] for r in escalated} <= {c.claude_answer for c in calls} and escalated
    report = traffic_report(rows, Prices(), window=None, by=("caller",))
    overall = next(r for r in report["total"] if r["category"] == "all")
    assert overall["local_share"] == pytest.approx(shares["all"]) and overall["requests"] == len(calls)
