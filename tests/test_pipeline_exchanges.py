"""The fleet's recorded traffic reaches a dataset version through the curation job: agentic-qe 3.14's own
requests replayed through the gateway (Claude a stand-in on loopback), feedback sent over HTTP, then
`group:curation` on a copy of the session's curated home."""

from __future__ import annotations

import dagster as dg
import httpx
import pytest
from datasets import load_from_disk
from homes import copy_home
from test_recording import CHATS, replay
from test_serving import PROMPT, artefacts, make_engine, policy  # noqa: F401 (fixtures)

from pipelines.definitions import defs
from pipelines.resources import RESOURCES
from qeforge.categories import CATEGORIES

pytestmark = pytest.mark.slow


def test_recorded_fleet_traffic_reaches_a_dataset_version(curated_home, artefacts, tmp_path, monkeypatch):
    import anthropic
    from servers import BackgroundServer, StandInClaude

    from qeforge.serving.app import create_app
    from qeforge.serving.escalation import ClaudeEscalation
    from qeforge.serving.recording import Recorder

    copy_home(curated_home, tmp_path, monkeypatch)
    db = RESOURCES["lancedb"].connect()
    claude = StandInClaude().start()
    try:
        engine = make_engine(artefacts, policy(), escalation=ClaudeEscalation(
            anthropic.Anthropic(api_key="sk-test", base_url=claude.url, max_retries=0)))
        with BackgroundServer(create_app(engine, recorder=Recorder(db)), startup_timeout_s=60) as server:
            ids = {name: replay(server.url, name, caller=f"fleet-{name}").json()["qeforge"]["exchange_id"] for name in CHATS}
            engine.escalation, engine.fallback = None, "local"  # no Claude now: the adapter answers
            local = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
                "model": "qeforge-test-generation", "messages": PROMPT, "max_tokens": 8}).json()["qeforge"]
            assert local["decision"] in ("local", "local_fallback") and all(ids.values())
            verdicts = [(ids["097"], "failure"), (local["exchange_id"], "success")]
            for exchange_id, outcome in verdicts:
                r = httpx.post(f"{server.url}/v1/feedback", json={"exchange_id": exchange_id, "outcome": outcome})
                assert r.status_code == 200, r.text
            refused = httpx.post(f"{server.url}/v1/feedback", json={"exchange_id": "nope", "outcome": "success"})
            assert refused.status_code == 400 and "exchange_id" in refused.json()["error"]["message"]
    finally:
        claude.stop()

    # The curation group alone: the base model is not what this test is about (the main job's loop skips it too).
    result = defs.resolve_job_def("curation").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=True,
        asset_selection=list(dg.AssetSelection.groups("curation").resolve(defs.resolve_asset_graph())))
    meta = {node: result.asset_materializations_for_node(node)[0].metadata
            for node in ("recorded_exchanges", "quality_gated", "categorized")}
    # 15 fleet calls escalated to Claude, one local answer marked good: 16 trajectories, none skipped.
    assert (meta["recorded_exchanges"]["exchanges_read"].value, meta["recorded_exchanges"]["trajectories"].value) == (16, 16)
    assert meta["recorded_exchanges"]["imported"].value == 16
    # The failure verdict is the gate's to charge, by its usual name; the rest pass as references.
    assert "| exchanges | 15 |" in meta["quality_gated"]["kept_by_import"].value
    assert "| failure |" in meta["quality_gated"]["failing_outcomes"].value
    # Prompts like "Reply with exactly: OK" are none of the four: counted, not trained.
    none = meta["categorized"]["none_of_the_four"].value
    assert none >= 1 and "exchanges" in meta["categorized"]["none_by_import"].value
    version = result.output_for_node("curated_datasets")
    assert version["version"] != curated_home.datasets["version"]
    rows = [r for c in CATEGORIES for split in load_from_disk(f"{version['path']}/{c}").values() for r in split
            if r["id"].startswith("exchange-")]
    by_id = {r["id"]: r for r in rows}
    good = by_id[f"exchange-{local['exchange_id']}"]  # the pinned local answer, category as routed
    assert good["category"] == "test-generation" and good["messages"][1] == PROMPT[0]
    assert f"exchange-{ids['097']}" not in by_id
    placed = {r["id"] for r in rows} - {good["id"]}
    print(f"fleet fixtures: {len(placed)} placed in a category, {none} none of the four")
    # The 14 fixture answers the gate kept each went to a category or to none (3 and 11 when written).
    assert len(placed) + none == 14 and len(placed) >= 1
