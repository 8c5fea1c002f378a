"""Recorded exchanges become trajectories by an explicit policy: Claude's answers to the fleet's real
prompts are references unless the fleet reported failure, local answers only when marked good, declined
calls and qeforge's own checks never. Written through the real Recorder and feedback table, imported
through the real ingest path into LanceDB."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import chat_call

from qeforge import store
from qeforge.categories import SYSTEM_PROMPTS
from qeforge.curation.categorize import CategoryClassifier, place
from qeforge.curation.exchanges import SMOKE_CHECK_CALLER, exchange_trajectories
from qeforge.curation.export import to_messages
from qeforge.curation.gate import GateRules, apply_gate
from qeforge.ingest import import_exchanges
from qeforge.serving.chat import Choice, Completion, text_block
from qeforge.serving.engine import Declined
from qeforge.serving.openai_api import chat_call as openai_call
from qeforge.serving.recording import Exchange, Recorder, feedback_row, record_feedback

FIXTURES = Path(__file__).parent / "fixtures" / "agentic-qe-3.14-llm-requests"
TEST_ENHANCEMENT = json.loads((FIXTURES / "004.json").read_text())["body"]  # agentic-qe's own request


def completion(text: str, decision: str, *, category="test-generation") -> Completion:
    claude = decision == "escalated"
    return Completion([Choice([text_block(text)], "stop")], category=category,
                      answered_by="claude-sonnet-4-6" if claude else f"qeforge-{category}@v1", decision=decision,
                      reason="not_confident" if claude else "confident", prompt_tokens=40, completion_tokens=9,
                      adapter_version=None if claude else "v1")


def record(db, exchanges: list[Exchange]) -> None:
    recorder = Recorder(db, flush_s=60)
    for e in exchanges:
        assert recorder.record(e)
    recorder.close()


def exchange(call, done=None, *, caller="fleet", declined=None) -> Exchange:
    return Exchange(call, done, "/v1/chat/completions", "openai-node", caller, time.time(), 0.2, declined)


@pytest.fixture
def recorded(tmp_path):
    """One of each kind of exchange in a real exchanges table, and feedback on two of them."""
    db = store.connect(str(tmp_path / "lancedb"))
    fleet = openai_call(TEST_ENHANCEMENT)
    short = chat_call("qeforge", [{"role": "user", "content": "Write pytest tests for add"}], max_tokens=16)
    kinds = {
        "claude": exchange(fleet, completion("```ts\nit('adds', ...)\n```", "escalated")),
        "claude_failed": exchange(short, completion("wrong tests", "escalated")),
        "local_unmarked": exchange(short, completion("def test_add(): pass", "local")),
        "local_good": exchange(short, completion("def test_add():\n    assert add(1, 2) == 3", "local")),
        "declined": exchange(short, declined=Declined("not_confident", "test-generation")),
        "smoke": exchange(short, completion("checked", "escalated"), caller=SMOKE_CHECK_CALLER),
    }
    record(db, list(kinds.values()))
    record_feedback(db, feedback_row({"exchange_id": kinds["claude_failed"].id, "outcome": "failure", "source": "aqe"}))
    record_feedback(db, feedback_row({"exchange_id": kinds["local_good"].id, "outcome": "failure"}))
    record_feedback(db, feedback_row({"exchange_id": kinds["local_good"].id, "outcome": "success", "quality": 0.9}))
    record_feedback(db, feedback_row({"exchange_id": "0" * 32, "outcome": "success"}))  # an id never recorded
    return db, {k: e.id for k, e in kinds.items()}


def test_the_policy_decides_which_exchanges_become_trajectories(recorded):
    db, ids = recorded
    summary, report = import_exchanges(db)
    assert report["skipped"] == {"declined": 1, "local_unmarked": 1, "own_check": 1}
    assert report["by_decision"] == {"escalated": 2, "local": 1} and report["feedback_unmatched"] == 1
    assert (summary.imported, summary.quarantined_total) == (3, 0)
    rows = {r["id"]: r for r in store.trajectories(db).to_arrow().to_pylist()}
    assert set(rows) == {f"exchange-{ids[k]}" for k in ("claude", "claude_failed", "local_good")}
    claude, failed, good = (rows[f"exchange-{ids[k]}"] for k in ("claude", "claude_failed", "local_good"))
    assert (claude["outcome"], claude["quality"], claude["model"], claude["source"]) == (
        "success", 1.0, "claude-sonnet-4-6", "exchanges")
    assert (failed["outcome"], failed["quality"]) == ("failure", 0.0)
    assert (good["outcome"], good["quality"], good["model"]) == ("success", 0.9, "qeforge-test-generation@v1")  # the latest verdict
    # The task is the user turn the router embeds; the system prompt travels with the row, as sent.
    assert claude["task"] == TEST_ENHANCEMENT["messages"][1]["content"]
    assert json.loads(claude["metadata"])["exchange"]["system"] == TEST_ENHANCEMENT["messages"][0]["content"]


def test_reimporting_adds_nothing_and_a_later_verdict_updates_the_row(recorded):
    db, ids = recorded
    import_exchanges(db)
    again, _ = import_exchanges(db)
    assert (again.imported, again.updated, again.already_present) == (0, 0, 3)
    time.sleep(0.01)  # a verdict strictly later than the row's timestamp
    record_feedback(db, feedback_row({"exchange_id": ids["claude"], "outcome": "failure", "quality": 0.2}))
    later, _ = import_exchanges(db)
    assert (later.imported, later.updated) == (0, 1)
    row = store.trajectories(db).search().where(f"id = 'exchange-{ids['claude']}'").to_arrow().to_pylist()[0]
    assert (row["outcome"], row["quality"]) == ("failure", 0.2)


def test_training_renders_the_recorded_system_prompt_exactly(recorded):
    db, ids = recorded
    import_exchanges(db)
    row = store.trajectories(db).search().where(f"id = 'exchange-{ids['claude']}'").to_arrow().to_pylist()[0]
    messages = to_messages("test-generation", row["task"], row["output"], row["metadata"])
    assert messages == [*TEST_ENHANCEMENT["messages"], {"role": "assistant", "content": row["output"]}]
    # A bank row, and an exchange sent without a system prompt, get the category's (as the gateway gives them).
    assert to_messages("code-review", "t", "o", "{}")[0] == {"role": "system", "content": SYSTEM_PROMPTS["code-review"]}
    short = store.trajectories(db).search().where(f"id = 'exchange-{ids['local_good']}'").to_arrow().to_pylist()[0]
    assert to_messages("test-generation", short["task"], short["output"], short["metadata"])[:2] == [
        {"role": "system", "content": SYSTEM_PROMPTS["test-generation"]},
        {"role": "user", "content": "Write pytest tests for add"}]


def test_the_gate_asks_references_for_no_reuse_but_everything_else():
    frame = pd.DataFrame({"id": ["bank", "exchange", "failed"], "task": ["t"] * 3, "output": ["o"] * 3,
                          "category": ["code-review"] * 3, "domain": [""] * 3, "outcome": ["success", "success", "failure"],
                          "quality": [1.0, 1.0, 0.0], "confidence": [1.0] * 3, "usage_count": [0, 0, 0],
                          "source": ["jsonl:bank.jsonl", "exchanges", "exchanges"]})
    kept, report = apply_gate(frame, GateRules())
    assert kept["id"].tolist() == ["exchange"]
    assert report.first_failing["usage_below_min"] == 1 and report.first_failing["outcome_not_success"] == 1


@pytest.mark.parametrize("body, message", [
    ({"exchange_id": "abc", "outcome": "success"}, "exchange_id"),
    ({"exchange_id": "a" * 32, "outcome": "great"}, "outcome"),
    ({"exchange_id": "a" * 32, "outcome": "success", "quality": 1.5}, "quality"),
    ({"exchange_id": "a" * 32, "outcome": "success", "quality": True}, "quality"),
    ([], "JSON object"),
])
def test_bad_feedback_is_refused_with_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message):
        feedback_row(body)


def test_place_leaves_texts_unlike_their_category_as_none():
    # Two categories on two axes; the third row is probable for "a" but far from every "a" row.
    classifier = CategoryClassifier(["code-review", "test-generation"], np.array([[4.0, 0, 0], [-4.0, 0, 0]], np.float32),
                                    np.zeros(2, np.float32))
    labeled = np.array([[1.0, 0, 0], [-1.0, 0, 0]], np.float32)
    rows = np.array([[0.9, 0.436, 0], [0.05, 0.9987, 0], [0.3, 0, 0.954]], np.float32)
    placed, probability, similarity = place(classifier, rows, labeled, ["code-review", "test-generation"])
    assert placed == ["code-review", None, None]
    assert probability[1] < 0.6 and probability[2] > 0.6 and similarity[2] < 0.65


def test_exchange_trajectories_is_pure_on_rows():
    made, report = exchange_trajectories([], [])
    assert made == [] and report["exchanges_read"] == 0
