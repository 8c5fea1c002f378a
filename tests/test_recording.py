"""Recorded exchanges: each call the gateway handles is one row of a real LanceDB `exchanges` table,
redacted, written off the request path; a full queue drops and counts; recording off writes nothing;
a server killed with SIGKILL mid-replay leaves a readable table."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from test_serving import PROMPT, artefacts, make_engine, policy  # noqa: F401 (fixtures)
from tiny_models import chat_call

from qeforge import store
from qeforge.serving.chat import Choice, Completion, text_block
from qeforge.serving.engine import Declined
from qeforge.serving.recording import EXCHANGES, REDACTED, Exchange, Recorder, Redactor

FIXTURES = Path(__file__).parent / "fixtures" / "agentic-qe-3.14-llm-requests"
RECORDED = {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}
CHAT_PATHS = ("/v1/chat/completions", "/v1/messages", "/api/chat")
CHATS = {name: r for name, r in RECORDED.items() if r["path"] in CHAT_PATHS}
# What a careless user pastes into a prompt, and what a client sends as its key: neither may be stored.
PLANTED = "sk-ant-api03-Zx9QwErTyUiOp_AsDfGhJkL-0123456789abcdef"
CLIENT_KEY = "sk-proj-ClientKeyThatMustNeverBeStored0001"


def exchange(text="the answer", *, declined=None, caller="unit", prompt="Write pytest tests for add"):
    call = chat_call("qeforge", [{"role": "user", "content": prompt}], max_tokens=16)
    done = None if declined else Completion(
        [Choice([text_block(text)], "stop")], category="test-generation", answered_by="qeforge-test-generation@v1",
        decision="local", reason="confident", prompt_tokens=12, completion_tokens=3, adapter_version="v1",
        signal="mean_logprob", confidence=-0.5, threshold=float("-inf"), policy_version="p-test", timings={"engine_s": 0.01})
    return Exchange(call, done, "/v1/chat/completions", "pytest", caller, time.time(), 0.01, declined)


def rows(db) -> list[dict]:
    return db.open_table(EXCHANGES).to_arrow().to_pylist() if EXCHANGES in db.table_names() else []


def test_default_patterns_redact_keys_tokens_and_passwords_and_keep_the_rest():
    redact = Redactor()
    text = (f"key {PLANTED}; openai sk-proj-abcdefghijklmnop0123; aws AKIAIOSFODNN7EXAMPLE; "
            "Authorization: Bearer eyJhbGciOi.J9.abc; db password=hunter2, pwd: s3cr3t")
    assert redact(text) == (f"key {REDACTED}; openai {REDACTED}; aws {REDACTED}; Authorization: {REDACTED}; "
                            f"db {REDACTED}, {REDACTED}")
    # Structures are walked, keys kept; text that only looks similar is left alone.
    assert redact({"m": [{"text": PLANTED}], "n": 3}) == {"m": [{"text": REDACTED}], "n": 3}
    assert redact("task-runner, sk-short, AKIA lowercase") == "task-runner, sk-short, AKIA lowercase"
    with pytest.raises(ValueError, match="redact pattern"):  # reported at startup, not on the first row
        Redactor([r"password=("])


def test_each_exchange_is_one_row_and_close_flushes_what_is_queued(tmp_path):
    db = store.connect(str(tmp_path / "lancedb"))
    recorder = Recorder(db, flush_s=60)  # no timed flush during the test: close must do it
    assert recorder.record(exchange("first", prompt=f"use {PLANTED} to log in"))
    assert recorder.record(exchange(declined=Declined("not_confident", "test-generation")))
    recorder.close()
    answered, declined = sorted(rows(db), key=lambda r: r["status"])
    assert (answered["status"], answered["decision"], answered["reason"], answered["answered_by"], answered["answer"]) == (
        200, "local", "confident", "qeforge-test-generation@v1", "first")
    assert json.loads(answered["choices"]) == [{"blocks": [{"type": "text", "text": "first"}], "finish": "stop"}]
    assert json.loads(answered["messages"]) == [{"role": "user", "content": f"use {REDACTED} to log in"}]
    assert json.loads(answered["parameters"])["max_tokens"] == 16 and answered["threshold"] == float("-inf")
    assert (declined["status"], declined["decision"], declined["reason"], declined["category"]) == (
        503, "declined", "not_confident", "test-generation")
    assert declined["answer"] is None and declined["answered_by"] is None and declined["choices"] is None
    assert answered["id"] != declined["id"] and answered["user_agent"] == "pytest" and answered["caller"] == "unit"


def test_a_full_queue_drops_and_counts_rather_than_waiting(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from qeforge.serving.gateway import DroppedExchanges

    db = store.connect(str(tmp_path / "lancedb"))
    recorder = Recorder(db, max_queue=4, batch_rows=4)
    registry = CollectorRegistry()
    registry.register(DroppedExchanges(recorder))
    started = time.perf_counter()
    queued = sum(recorder.record(exchange(f"a{i}")) for i in range(1000))
    elapsed = time.perf_counter() - started
    recorder.close()
    # 1000 records take far less than one LanceDB commit each: most find the 4-slot queue full.
    assert recorder.dropped > 0 and queued + recorder.dropped == 1000 and len(rows(db)) == queued
    assert elapsed < 1.0, f"record() waited: 1000 calls took {elapsed:.2f}s"
    assert f"qeforge_exchanges_dropped_total {float(recorder.dropped)}" in generate_latest(registry).decode()


def test_recording_off_records_nothing_and_opens_no_table(tmp_path):
    from pipelines.resources import ServingSettings

    db = store.connect(str(tmp_path / "lancedb"))
    off = ServingSettings(record_exchanges=False).settings(None, models_dir=tmp_path, classifier_path=None, db=db)
    recorder = off.build_recorder()
    assert not recorder.enabled and recorder.record(exchange()) is False
    recorder.close()
    assert EXCHANGES not in db.table_names()
    on = ServingSettings(redact_patterns=[r"hunter\d"]).settings(None, models_dir=tmp_path, classifier_path=None, db=db)
    assert Redactor(on.redact_patterns)("pw hunter2 sk-ant-api03-kept-because-not-a-pattern") == (
        f"pw {REDACTED} sk-ant-api03-kept-because-not-a-pattern")


# -- the gateway, serving the tiny adapters ------------------------------------------------------
def replay(url: str, name: str, *, caller: str, plant: bool = False) -> httpx.Response:
    recorded = CHATS[name]
    headers = {k: v for k, v in recorded["headers"].items() if k.lower() not in ("content-length", "host")}
    headers.update({"X-QEForge-Caller": caller, "Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY})
    body = json.loads(json.dumps(recorded["body"]))
    if plant:  # a key pasted into the last user turn
        last = body["messages"][-1]
        last["content"] = f"{last['content']}\n(my key is {PLANTED})"
    return httpx.post(url + recorded["path"], headers=headers, json=body, timeout=300)


@pytest.mark.slow
def test_replayed_fixtures_are_recorded_once_each_with_who_answered_and_no_secret(artefacts, tmp_path):
    import anthropic
    from servers import BackgroundServer, StandInClaude

    from qeforge.serving.app import create_app
    from qeforge.serving.escalation import ClaudeEscalation

    db = store.connect(str(tmp_path / "lancedb"))
    claude = StandInClaude().start()
    try:
        engine = make_engine(artefacts, policy(), escalation=ClaudeEscalation(
            anthropic.Anthropic(api_key="sk-test", base_url=claude.url, max_retries=0)))
        routes = {}
        with BackgroundServer(create_app(engine, recorder=Recorder(db)), startup_timeout_s=60) as server:
            for name in CHATS:
                r = replay(server.url, name, caller=f"fleet-{name}", plant=name == "097")
                assert r.status_code == 200, (name, r.text)
                routes[name] = r.json()["qeforge"]
            engine.escalation, engine.fallback = None, "decline"  # no Claude: each call routed away is a 503
            declined = replay(server.url, "097", caller="declined-097")
            assert declined.status_code == 503
            assert "qeforge_exchanges_dropped_total 0.0" in httpx.get(f"{server.url}/metrics").text
        # The server stopped: its lifespan closed the recorder, so every queued row is in.
    finally:
        claude.stop()
    by_caller = {}
    for row in rows(db):
        assert row["caller"] not in by_caller, f"{row['caller']} recorded twice"
        by_caller[row["caller"]] = row
    assert set(by_caller) == {f"fleet-{n}" for n in CHATS} | {"declined-097"} and len(CHATS) == 15
    for name, route in routes.items():
        row = by_caller[f"fleet-{name}"]
        assert {k: row[k] for k in ("answered_by", "decision", "reason", "category")} == {
            k: route[k] for k in ("answered_by", "decision", "reason", "category")}, name
        assert row["status"] == 200 and row["answer"] and row["model"] == CHATS[name]["body"]["model"]
        assert row["path"] == CHATS[name]["path"] and row["latency_s"] > 0 and row["user_agent"]
    assert by_caller["fleet-153"]["answered_by"] == "claude-sonnet-4-6"  # the Claude model the fleet named
    assert by_caller["declined-097"]["decision"] == "declined" and by_caller["declined-097"]["answer"] is None
    # The planted key reached Claude (it is the client's request) but not the table; no client key either.
    assert any(PLANTED in json.dumps(r["body"]) for r in claude.requests)
    stored = json.dumps(rows(db), default=str)
    assert PLANTED not in stored and CLIENT_KEY not in stored
    assert f"(my key is {REDACTED})" in by_caller["fleet-097"]["messages"]


def serve_command(artefacts, tmp_path: Path, port: int) -> list[str]:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy()))
    adapters = [f"--adapter={c}={p}" for c, p in artefacts["adapters"].items()]
    return [sys.executable, "-m", "qeforge.cli", "serve", "--port", str(port), "--base", artefacts["base"],
            "--policy", str(policy_file), "--fallback", "local", *adapters]


@pytest.mark.slow
def test_a_server_killed_mid_replay_leaves_a_readable_table(artefacts, tmp_path):
    """`qeforge serve` in its own process (ServingSettings' default: recording on), SIGKILLed while four
    clients replay the fleet's calls and pinned local ones; the table is then read back whole and
    still takes appends."""
    from concurrent.futures import ThreadPoolExecutor

    from servers import free_port, spawn, stop, wait_until

    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "QEFORGE_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    for name in ("ANTHROPIC_API_KEY", "QEFORGE_LANCEDB_URI", "QEFORGE_API_KEY"):
        env.pop(name, None)
    server = spawn(serve_command(artefacts, tmp_path, port), env=env)
    url = f"http://127.0.0.1:{port}"
    # No classifier and no Claude here: the fixtures route as no_category and get 503s (recorded as
    # declined); the pinned short call is answered by the tiny adapter.
    names = [*CHATS, "local"]
    attempts = []

    def send(caller: str, name: str) -> int:
        attempts.append(caller)
        if name == "local":
            return httpx.post(f"{url}/v1/chat/completions", headers={"X-QEForge-Caller": caller}, timeout=300,
                              json={"model": "qeforge-test-generation", "messages": PROMPT, "max_tokens": 8}).status_code
        return replay(url, name, caller=caller).status_code

    def keep_sending(worker: int) -> None:
        for i in range(1000):
            try:
                send(f"after-{worker}-{i}", names[i % len(names)])
            except httpx.TransportError:  # the server is gone
                return

    try:
        # urllib's connection errors are OSErrors, which wait_until takes as "not yet"
        wait_until(lambda: urllib.request.urlopen(f"{url}/health", timeout=5).status == 200, timeout_s=300,
                   process=server, what="qeforge serve")
        for name in names:  # one pass, then a pause past the 1 s flush: these rows are committed
            assert send(f"before-{name}", name) in (200, 503)
        time.sleep(2.5)
        with ThreadPoolExecutor(4) as pool:  # ... and these are in flight, or queued, when the kill comes
            pool.map(keep_sending, range(4))
            time.sleep(3)
            os.killpg(server.pid, signal.SIGKILL)
    finally:
        stop(server)
    db = store.connect(str(home / "lancedb"))
    found = rows(db)  # the whole table, every column, reads back
    callers = [r["caller"] for r in found]
    assert sorted(c for c in callers if c.startswith("before-")) == sorted(f"before-{n}" for n in names)
    assert len(callers) == len(set(callers)) and set(callers) <= set(attempts)
    decisions = {r["caller"]: r["decision"] for r in found}
    assert decisions["before-097"] == "declined" and decisions["before-local"] in ("local", "local_fallback")
    for r in found:
        json.loads(r["messages"]), json.loads(r["parameters"])
    print(f"after SIGKILL: {len(found)} rows readable; {len(attempts) - len(found)} of {len(attempts)} calls sent "
          "not recorded (the batch in hand, and calls the kill cut short)")
    recorder = Recorder(db)  # and the table still takes appends
    recorder.record(exchange(caller="after-kill"))
    recorder.close()
    assert len(rows(db)) == len(found) + 1
