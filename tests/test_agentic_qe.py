"""The agentic-qe importer on a memory.db that agentic-qe 3.14.0's own code wrote (tests/fixtures)."""

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from qeforge import store
from qeforge.curation.domains import AQE_DOMAIN_CATEGORIES, TASK_PATTERNS, resolve_categories
from qeforge.ingest import import_agentic_qe

FIXTURE = Path(__file__).parent / "fixtures" / "agentic-qe-3.14" / "memory.db"
AAA_PATTERN = "3abf4f53-00b1-4905-8316-cbed7a132b0a"  # used 10 times, 10 successes
UNUSED_PATTERN = "08fa6ae4-7ed6-45d4-a92d-3edaecc6ed83"  # usage 0, success_rate 0.0 by default
HOOK_EXPERIENCE = "exp-1795317913616-430cb511"  # "qe-test-architect:t-001", no result


@pytest.fixture
def db(tmp_path):
    return store.connect(str(tmp_path / "lancedb"))


@pytest.fixture
def store_copy(tmp_path):
    path = tmp_path / "memory.db"
    shutil.copyfile(FIXTURE, path)
    return path


def rows(db) -> pd.DataFrame:
    return store.trajectories(db).to_pandas().set_index("id")


@pytest.mark.slow
def test_counts_per_table(db):
    summary = import_agentic_qe(db, FIXTURE).as_dict()
    tables = summary["by_table"]
    assert {t: (v["read"], v["imported"], v["quarantined"]) for t, v in tables.items() if "imported" in v} == {
        # 21 experiences have no result: 19 hook events, 1 failed run (cobol), 1 experience-replay strategy.
        "captured_experiences": (39, 18, 21),
        "qe_patterns": (101, 101, 0),
        # 6 trajectories are hook runs or queen plans with no step result; one review timed out.
        "qe_trajectories": (9, 2, 7),
    }
    assert summary["quarantined_by_reason"] == {"no_answer": 28}
    assert tables["trajectory_steps"] == {"read": 7, "joined": 5}  # the timed-out review's 2 steps stay in quarantine
    assert tables["qe_pattern_usage"] == {"read": 74, "joined": 74}
    assert tables["test_outcomes"]["joined"] == 5  # the generated suites agentic-qe executed
    quarantine = store.quarantine(db).to_pandas().set_index("row_id")
    assert quarantine.loc[HOOK_EXPERIENCE, "detail"] == "cli-hook-post-task event: agentic-qe recorded no result for it"
    assert json.loads(quarantine.loc[HOOK_EXPERIENCE, "raw"])["task"] == "qe-test-architect:t-001"  # nothing lost


def test_experience_fields(db):
    import_agentic_qe(db, FIXTURE)
    r = rows(db).loc["exp-fe86a49e-d5f6-4eb0-9f49-46f27a5a7212"]
    assert r["model"] == "claude-sonnet-4-5"  # routing_json.modelId
    assert r["output"].startswith("# Applied patterns: pytest-zero-division\nimport pytest")  # tests[].testCode
    assert r["confidence"] == 0.85  # the agent's own aiInsights.confidence, not the 0.5 default
    assert (r["usage_count"], r["success_count"]) == (0, 0)  # application_count (1) is not reuse
    assert r["embedding_text"] == "domain: task" and len(r["embedding"]) == 384
    meta = json.loads(r["metadata"])
    assert meta["model_tier"] == 2 and meta["generation_mode"] == "deterministic-template"
    assert meta["result"]["tests"][0]["sourceFile"] == "tests/test_flaky.py"  # raw result kept
    assert meta["executed"] == [{"coverage_branches": 0.0, "coverage_lines": 0.0, "error_message": None,
                                 "execution_time_ms": 89.0, "flaky": 0, "framework": "pytest",
                                 "language": "python", "mutation_score": None, "passed": 1}]
    coverage = rows(db).loc["exp-e8632609-1188-4ac4-91bd-4c468c52dca7"]
    # No modelId: the tier agentic-qe routed the task to (routing_outcomes, joined by taskId).
    assert coverage["model"] == "claude-sonnet"
    assert "Uncovered lines in /srv/app/src/calc.py: 2, 3, 4, 5, 6, 7" in coverage["output"]
    assert coverage["confidence"] == 0.2  # agentic-qe's own: a static estimate, no instrumentation ran


def test_pattern_fields(db):
    import_agentic_qe(db, FIXTURE)
    used, unused = rows(db).loc[AAA_PATTERN], rows(db).loc[UNUSED_PATTERN]
    assert (used["outcome"], used["usage_count"], used["success_count"]) == ("success", 10, 10)
    assert used["output"].startswith("describe('{{className}}'")  # template content
    assert used["embedding_text"] == "name + description + tags"  # so curation re-embeds the task
    assert unused["outcome"] == "unknown" and unused["usage_count"] == 0  # never used is not a failure


def test_trajectories_keep_their_steps(db):
    import_agentic_qe(db, FIXTURE)
    tests = rows(db).loc["7dec0eaa-b66d-4a1c-bc53-6c67dc570c3e"]
    assert [s["action"] for s in tests["steps"]] == ["analyze-source", "generate-tests", "run-tests"]
    assert tests["steps"][1]["tokens"] == 640 and tests["steps"][2]["result"] == '{"passed":2,"failed":0}'
    assert tests["output"].startswith("def test_divide_by_zero():")
    flaky = rows(db).loc["a5b00bc3-4732-40e4-a102-28cbe579e72c"]
    assert flaky["output"] == "Verdict: flaky\nCause: unseeded randomness + sleep"
    assert flaky["steps"][0]["error"] == "3/20 runs failed: assert random.random() > 0.1"
    assert flaky["quality"] == 0.5  # metadata_json.metrics.averageQuality


def test_routing_outcomes_supply_the_full_task(db, store_copy):
    # Give the hook experience for task t-001 a result: its task is then the description the router kept.
    with sqlite3.connect(store_copy) as conn:
        conn.execute("UPDATE captured_experiences SET result_json = ? WHERE id = ?",
                     (json.dumps({"tests": [{"name": "divide", "testCode": "def test_divide(): ..."}]}), HOOK_EXPERIENCE))
    import_agentic_qe(db, store_copy)
    r = rows(db).loc[HOOK_EXPERIENCE]
    assert r["task"] == "Generate pytest unit tests for divide() in src/calc.py including ZeroDivisionError"
    assert json.loads(r["metadata"])["aqe_task"] == "qe-test-architect:t-001"


@pytest.mark.slow
def test_reimport_is_idempotent(db):
    first = import_agentic_qe(db, FIXTURE)
    second = import_agentic_qe(db, FIXTURE)
    assert (second.imported, second.updated, second.already_present) == (0, 0, first.imported)
    assert store.trajectories(db).count_rows() == first.imported
    assert store.quarantine(db).count_rows() == first.quarantined_total


@pytest.mark.slow
def test_in_place_update_is_an_update_not_a_conflict(db, store_copy):
    import_agentic_qe(db, store_copy)
    with sqlite3.connect(store_copy) as conn:  # what agentic-qe does on one more successful reuse
        conn.execute("UPDATE qe_patterns SET usage_count = usage_count + 1, successful_uses = successful_uses + 1,"
                     " updated_at = '2026-11-23 09:00:00' WHERE id = ?", (AAA_PATTERN,))
    summary = import_agentic_qe(db, store_copy)
    assert (summary.updated, summary.imported, summary.quarantined_total) == (1, 0, 28)
    assert "conflicting_id" not in summary.quarantined
    assert rows(db).loc[AAA_PATTERN, "usage_count"] == 11
    history = store.history(db).to_pandas()
    assert history["id"].tolist() == [AAA_PATTERN] and history["usage_count"].tolist() == [10]

    # The same id with other content and no newer timestamp is still a conflict, and the stored row stands.
    with sqlite3.connect(store_copy) as conn:
        conn.execute("UPDATE qe_patterns SET description = 'edited by hand' WHERE id = ?", (AAA_PATTERN,))
    assert import_agentic_qe(db, store_copy).quarantined["conflicting_id"] == 1
    assert "edited by hand" not in rows(db).loc[AAA_PATTERN, "task"]


def _digest(*paths) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_live_store_in_wal_mode_is_read_without_writing(db, store_copy):
    writer = sqlite3.connect(store_copy)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # what agentic-qe has not yet checkpointed stays in -wal
    writer.execute(
        "INSERT INTO qe_patterns (id, pattern_type, qe_domain, domain, name, description, usage_count, success_rate,"
        " quality_score, template_json) VALUES ('wal-only', 'test-template', 'test-generation', 'test-generation',"
        " 'Written while open', 'only in the WAL', 4, 1.0, 0.9, ?)", (json.dumps({"content": "def test_x(): ..."}),)
    )
    writer.commit()
    wal = store_copy.with_name("memory.db-wal")
    assert wal.stat().st_size > 0
    before = _digest(store_copy, wal)
    try:
        summary = import_agentic_qe(db, store_copy)
        assert summary.by_table["qe_patterns"]["imported"] == 102
        assert rows(db).loc["wal-only", "output"] == "def test_x(): ..."
        assert _digest(store_copy, wal) == before  # read, never written or checkpointed
    finally:
        writer.close()


def test_not_an_agentic_qe_store(db, tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValueError, match="not an agentic-qe"):
        import_agentic_qe(db, path)
    (tmp_path / "text.db").write_text("not sqlite")
    with pytest.raises(ValueError, match="not a readable SQLite database"):
        import_agentic_qe(db, tmp_path / "text.db")


def test_domain_map_resolves_categories():
    frame = pd.DataFrame({
        "category": [None, None, None, None, None, "code-review"],
        "domain": ["coverage-analysis", "test-execution", "test-execution", "security-compliance", "billing", "general"],
        "task": ["Analyze src/", "Detect whether test_x is flaky", "Execute 1 test files", "Scan", "x", "y"],
    })
    category, source = resolve_categories(frame, AQE_DOMAIN_CATEGORIES, TASK_PATTERNS)
    assert category.tolist() == ["coverage-analysis", "flaky-detection", None, None, None, "code-review"]
    assert source.tolist() == ["domain_map", "task_pattern", "out_of_scope", "out_of_scope", "unmapped", "recorded"]
    with pytest.raises(ValueError, match="categories are"):
        resolve_categories(frame, {"test-execution": "perf-testing"}, TASK_PATTERNS)


@pytest.mark.slow
def test_curation_on_the_real_store_ends_with_a_check_that_says_why(qe_home):
    """Nothing in the fixture passes the default gate (no pattern reaches quality 0.8 at 3 uses, no
    experience was reused 3 times): every step runs on zero rows and the gate check names the reasons."""
    from pipelines.definitions import defs
    from pipelines.resources import LanceDBResource

    import_agentic_qe(LanceDBResource().connect(), FIXTURE)
    result = defs.resolve_job_def("curation").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success  # no step raised
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    gate = checks["rows_pass_gate"]
    assert not gate.passed
    explanation = gate.metadata["explanation"].value
    assert explanation.startswith("0 of 121 trajectories passed the gate")
    assert gate.metadata["failing/out_of_scope"].value == 54  # security, requirements, plain test runs, ...
    assert gate.metadata["failing/usage_below_min"].value > 0
    for step in ("quality_gated", "trajectory_embeddings", "deduplicated", "categorized", "balanced"):
        assert result.asset_materializations_for_node(step)[0].metadata["dagster/row_count"].value == 0
    assert not result.asset_materializations_for_node("curated_datasets")  # no version written
    assert "splits_non_empty" not in checks  # skipped with the asset, not failed with a stack trace


def test_cli_import_and_datasets_show_say_why_nothing_passes(qe_home, capsys):
    from qeforge.cli import main

    assert main(["import", "--format", "agentic-qe", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "qe_patterns              read   101, imported   101" in out
    assert "trajectory_steps         read     7, joined into trajectories     5" in out
    assert "curation gate: 0 of 121 trajectories passed the gate" in out
    assert main(["datasets", "show"]) == 1
    err = capsys.readouterr().err
    assert "none can be made from what is stored" in err and "usage_below_min" in err
