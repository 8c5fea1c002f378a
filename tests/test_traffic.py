"""The traffic report on a real exchanges table written by the Recorder: shares per category and "none",
escalations by reason, agreement with Claude on prompts Claude also answered, dollars saved, windows;
`qeforge traffic` and the `fleet_traffic` asset show the same figures."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dagster as dg
import pytest
from tiny_models import chat_call

from qeforge import store
from qeforge.curation.exchanges import SMOKE_CHECK_CALLER
from qeforge.evaluation.routing import Prices
from qeforge.serving.chat import Choice, Completion, text_block
from qeforge.serving.engine import Declined
from qeforge.serving.recording import Exchange, Recorder
from qeforge.traffic import read_exchanges, traffic_report

DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21, a day boundary away from the next window's exchanges


def answered(prompt: str, text: str, decision: str, reason: str, category: str) -> Completion:
    return Completion([Choice([text_block(text)], "stop")], category=category,
                      answered_by="claude-sonnet-4-6" if decision == "escalated" else f"qeforge-{category}@v1",
                      decision=decision, reason=reason, prompt_tokens=1000, completion_tokens=500)


def call(prompt: str):
    return chat_call("qeforge", [{"role": "user", "content": prompt}])


@pytest.fixture
def db(tmp_path):
    db = store.connect(str(tmp_path / "lancedb"))
    claude_answer = "def test_add():\n    assert add(1, 2) == 3"
    day1 = [  # the same prompt escalates on day one and is answered locally on day two
        (call("write tests for add"), answered("", claude_answer, "escalated", "not_confident", "test-generation"), "fleet"),
        (call("Reply with exactly: OK"), answered("", "OK", "escalated", "no_category", "none"), "fleet"),
        (call("review this diff"), None, "fleet"),  # declined
        (call("write tests for add"), answered("", "smoke", "local", "confident", "test-generation"), SMOKE_CHECK_CALLER),
    ]
    day2 = [
        (call("write tests for add"), answered("", claude_answer, "local", "confident", "test-generation"), "fleet"),
        (call("write tests for sub"), answered("", "def test_sub(): ...", "local", "confident", "test-generation"), "fleet"),
        (call("Reply with exactly: OK"), answered("", "OK", "escalated", "no_category", "none"), "fleet"),
    ]
    recorder = Recorder(db, flush_s=60)
    for when, batch in ((T0, day1), (T0 + DAY, day2)):
        for c, done, caller in batch:
            declined = None if done else Declined("not_confident", "code-review")
            recorder.record(Exchange(c, done, "/v1/chat/completions", "ua", caller, when, 0.1, declined))
    recorder.close()
    return db


def by_category(records: list[dict], **keys) -> dict[str, dict]:
    return {r["category"]: r for r in records if all(r.get(k) == v for k, v in keys.items())}


def test_shares_agreement_and_savings_per_category_and_window(db):
    report = traffic_report(read_exchanges(db), Prices(local_per_hour=3.6, local_requests_per_hour=3600), window="1D")
    assert report["requests"] == 6  # the smoke check is not the fleet's traffic
    total = by_category(report["total"])
    assert set(total) == {"all", "test-generation", "none", "code-review"}
    tg = total["test-generation"]
    assert (tg["requests"], tg["local"], tg["escalated_by_reason"]) == (3, 2, {"not_confident": round(1 / 3, 4)})
    # The local answer to the prompt Claude answered is Claude's answer word for word: one pair, agreement 1.
    assert (tg["agreement_pairs"], tg["agreement_with_claude"]) == (1, pytest.approx(1.0))
    # Two local answers of 1000 in + 500 out at $3/$15 per Mtok = $0.0105 each, less $0.001 local each, per 3 requests.
    assert tg["usd_saved_per_1k"] == pytest.approx(1000 * 2 * (0.0105 - 0.001) / 3)
    assert total["none"]["local_share"] == 0 and total["code-review"]["declined_share"] == 1
    assert total["all"]["local_share"] == pytest.approx(2 / 6)
    days = sorted({r["window"] for r in report["windows"]})
    assert len(days) == 2
    assert by_category(report["windows"], window=days[0])["test-generation"]["local_share"] == 0
    assert by_category(report["windows"], window=days[1])["test-generation"]["local_share"] == 1


def test_by_caller_splits_and_an_empty_store_reports_nothing(db, tmp_path):
    report = traffic_report(read_exchanges(db), Prices(), window=None, by=("caller",))
    assert {r["caller"] for r in report["total"]} == {"fleet"} and "windows" not in report
    empty = store.connect(str(tmp_path / "empty"))
    assert traffic_report(read_exchanges(empty), Prices()) == {"requests": 0, "total": [], "windows": []}


@pytest.mark.slow
def test_the_cli_and_the_asset_show_the_same_figures(qe_home, tmp_path):
    from pipelines.definitions import defs
    from pipelines.resources import RESOURCES

    db = RESOURCES["lancedb"].connect()
    recorder = Recorder(db)
    for i in range(4):
        done = answered("", "ok", "local" if i % 2 else "escalated", "confident" if i % 2 else "not_confident", "code-review")
        recorder.record(Exchange(call(f"review {i}"), done, "/v1/messages", "ua", "fleet", time.time(), 0.1))
    recorder.close()
    plot = tmp_path / "traffic.png"
    out = subprocess.run([sys.executable, "-m", "qeforge.cli", "traffic", "--json", "--plot", str(plot)],
                         capture_output=True, text=True, check=True)
    cli = by_category(json.loads(out.stdout)["total"])
    assert cli["code-review"]["local_share"] == 0.5 and plot.stat().st_size > 1000
    result = dg.materialize([a for a in defs.assets if a.key == dg.AssetKey("fleet_traffic")],
                            resources=RESOURCES, instance=dg.DagsterInstance.ephemeral())
    meta = result.asset_materializations_for_node("fleet_traffic")[0].metadata
    assert meta["local_share/code-review"].value == cli["code-review"]["local_share"]
    assert meta["requests"].value == 4 and meta["plot"].value.startswith("![")


def test_an_hourly_schedule_imports_the_exchanges_and_reports_the_traffic():
    from pipelines.definitions import defs
    from pipelines.jobs import traffic_job

    schedule = next(s for s in defs.schedules if s.name == "hourly_traffic")
    assert (schedule.cron_schedule, schedule.job_name) == ("0 * * * *", "traffic")
    selected = {k.to_user_string() for k in traffic_job.selection.resolve(defs.resolve_asset_graph())}
    assert selected == {"recorded_exchanges", "fleet_traffic"}
