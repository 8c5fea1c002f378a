"""Read agentic-qe 3.14's ReasoningBank (`.agentic-qe/memory.db`) as trajectories.

Written from the schema agentic-qe itself writes (tests/fixtures/agentic-qe-3.14). Three tables
become trajectories; six more are joined into them as evidence. The mapping, column by column, is
the README's "Reading agentic-qe" table; the reasons are in the comments here.

- `captured_experiences`: one task an agent ran. The answer sits inside `result_json` in a
  tool-specific shape (`answer_from_result`); hook events and failed runs have none.
- `qe_patterns`: a reusable template (task = name + description, answer = the template).
- `qe_trajectories` + `trajectory_steps`: step-by-step runs, kept with their steps.

Rows without an answer come back as `InvalidRow("no_answer", why)`: the importer quarantines them
with that code and the raw row, so nothing is lost and nothing unanswerable is trained on.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from collections import defaultdict
from pathlib import Path

from qeforge.schema import InvalidRow

AQE_DEFAULT_CONFIDENCE = 0.5  # agentic-qe's column default when nothing was recorded
# agentic-qe writes this model name on every vector whatever embedder ran; the real provenance is space_id.
AQE_VECTOR_MODEL = "all-MiniLM-L6-v2"
# What agentic-qe's vectors embed (its own code: PatternStore / ExperienceCaptureService).
PATTERN_EMBEDS = "name + description + tags"
EXPERIENCE_EMBEDS = "domain: task"
# agentic-qe's routing tiers are Claude families (tier 1 haiku, 2 sonnet, 3 opus).
CLAUDE_TIERS = {"haiku", "sonnet", "opus"}
TRAJECTORY_TABLES = ("captured_experiences", "qe_patterns", "qe_trajectories")
JOINED_TABLES = (
    "trajectory_steps", "routing_outcomes", "test_outcomes", "qe_pattern_usage",
    "qe_pattern_embeddings", "experience_applications", "sona_patterns",
)
_AGENT_TASK = re.compile(r"^[\w.-]+:([\w.-]+)$")  # hook tasks read "qe-test-architect:t-001"


def snapshot(path: str | Path) -> sqlite3.Connection:
    """A consistent in-memory copy of a live store, read without writing to it.

    agentic-qe keeps memory.db open in WAL mode. A read-only connection still reads the `-wal`
    file (SQLite merges it on read), and the backup API copies the committed state in one read
    transaction, so a writer holds us up for one page copy at most and we never checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (agentic-qe keeps it at .agentic-qe/memory.db)")
    source = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)
    except sqlite3.DatabaseError as err:
        copy.close()
        raise ValueError(f"{path} is not a readable SQLite database: {err}") from err
    finally:
        source.close()
    copy.row_factory = sqlite3.Row
    return copy


def _tables(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _rows(conn, table: str) -> list[dict]:
    if table not in _tables(conn):
        return []
    return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608 - names are constants


def _json(text) -> object:
    if not text:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _dict(text) -> dict:
    value = _json(text)
    return value if isinstance(value, dict) else {}


def _vector(blob: bytes | None) -> list[float] | None:
    if not blob:
        return None
    return list(struct.unpack(f"<{len(blob) // 4}f", blob[: len(blob) // 4 * 4]))


# --- the answer inside a result, by its shape ------------------------------------------------


def _bullets(items) -> list[str]:
    return [f"- {i if isinstance(i, str) else json.dumps(i, sort_keys=True)}" for i in items or []]


def _coverage_answer(result: dict) -> str:
    lines = []
    if result.get("lineCoverage") is not None:
        lines.append(f"Line coverage: {result['lineCoverage']}%")
    for f in result.get("coverageByFile") or []:
        lines.append(f"{f.get('file')}: {f.get('lineCoverage')}% of lines covered")
    gaps = (result.get("gapAnalysis") or {}).get("gaps") or result.get("gaps") or []
    for gap in gaps:
        numbers = ", ".join(str(n) for n in gap.get("uncoveredLines") or [gap.get("line")])
        lines.append(f"Uncovered lines in {gap.get('file')}: {numbers} ({gap.get('reason', gap.get('type', ''))})")
    if not gaps and result.get("coverageByFile"):
        lines.append("Uncovered lines: none")
    lines += _bullets((result.get("aiInsights") or {}).get("recommendations"))
    return "\n".join(lines)


def _findings_answer(result: dict) -> str:
    scalars = ("qualityScore", "passed", "riskScore", "vulnerabilities", "critical", "high", "medium", "low")
    lines = [f"{k}: {result[k]}" for k in scalars if k in result]
    if isinstance(result.get("metrics"), dict):
        lines.append("metrics: " + ", ".join(f"{k}={v}" for k, v in result["metrics"].items()))
    for key in ("predictedDefects", "topVulnerabilities", "findings", "issues"):
        if key in result:
            lines.append(f"{key}:" + (" none" if not result[key] else ""))
            lines += _bullets(result[key])
    if result.get("recommendations"):
        lines.append("Recommendations:")
        lines += _bullets(result["recommendations"])
    return "\n".join(lines)


def _execution_answer(result: dict) -> str:
    lines = [f"{k}: {result[k]}" for k in ("total", "passed", "failed") if k in result]
    lines += [f"- {r.get('name')}: {r.get('status')}" for r in result.get("results") or [] if isinstance(r, dict)]
    return "\n".join(lines)


def answer_from_result(result) -> tuple[str | None, str]:
    """(answer text, the shape it was read from). The shapes are those agentic-qe's tools write."""
    if isinstance(result, str):
        return (result, "text") if result.strip() else (None, "empty")
    if not isinstance(result, dict):
        return None, "none"
    code = [t["testCode"] for t in result.get("tests") or [] if isinstance(t, dict) and t.get("testCode")]
    if code:
        return "\n\n".join(code), "tests[].testCode"
    if isinstance(result.get("testCode"), str):
        return result["testCode"], "testCode"
    if "verdict" in result:
        cause = f"\nCause: {result['cause']}" if result.get("cause") else ""
        return f"Verdict: {result['verdict']}{cause}", "verdict"
    if "coverageByFile" in result or "gapAnalysis" in result:
        return _coverage_answer(result), "coverage"
    if any(k in result for k in ("predictedDefects", "topVulnerabilities", "findings", "qualityScore")):
        return _findings_answer(result), "findings"
    if "results" in result and "total" in result:
        return _execution_answer(result), "test-execution"
    for key in ("output", "content", "comment", "summary", "text"):
        if isinstance(result.get(key), str) and result[key].strip():
            return result[key], key
    return None, "unrecognized"


# --- joined evidence ----------------------------------------------------------------------


class Evidence:
    """The joined tables, indexed the way the trajectory tables point at them."""

    def __init__(self, conn):
        self.counts = {t: len(_rows(conn, t)) for t in JOINED_TABLES}
        self.used = defaultdict(set)  # joined table -> ids of rows that reached a trajectory
        self.routing_by_task = {}
        for r in _rows(conn, "routing_outcomes"):
            task = _dict(r["task_json"])
            for key in (task.get("taskId"), task.get("id")):
                if key:
                    self.routing_by_task[key] = r
        self.steps = defaultdict(list)
        for s in sorted(_rows(conn, "trajectory_steps"), key=lambda s: s["step_order"]):
            self.steps[s["trajectory_id"]].append(s)
        self.tests_by_name = defaultdict(list)
        for t in _rows(conn, "test_outcomes"):
            self.tests_by_name[t["test_name"]].append(t)
        self.pattern_usage = defaultdict(list)
        for u in _rows(conn, "qe_pattern_usage"):
            self.pattern_usage[u["pattern_id"]].append(u)
        self.pattern_vectors = {e["pattern_id"]: e for e in _rows(conn, "qe_pattern_embeddings")}
        self.applications = defaultdict(list)
        for a in _rows(conn, "experience_applications"):
            self.applications[a["experience_id"]].append(a)
        self.sona = {}
        for s in _rows(conn, "sona_patterns"):
            experience = _dict(s["metadata"]).get("experienceId")
            if experience:
                self.sona[experience] = s

    def routing(self, key: str | None) -> dict | None:
        return self.routing_by_task.get(key) if key else None

    def executed_tests(self, names: list[str], at: str) -> list[dict]:
        """test_outcomes rows agentic-qe wrote for these generated tests in the same second."""
        found = [t for n in names for t in self.tests_by_name.get(n, []) if t["created_at"] == at]
        self.used["test_outcomes"].update(t["id"] for t in found)
        keys = ("passed", "framework", "language", "coverage_lines", "coverage_branches", "mutation_score",
                "execution_time_ms", "flaky", "error_message")
        return [{k: t[k] for k in keys} for t in found]


def _full_task(task: str, evidence: Evidence, *keys: str | None) -> tuple[str, str | None]:
    """agentic-qe abbreviates tasks ("Generate tests for code (137 chars)", "qe-flaky-hunter:t-003");
    `routing_outcomes.task_json` keeps the description it routed. The longer of the two is the task."""
    match = _AGENT_TASK.match(task or "")
    for key in (*keys, match.group(1) if match else None):
        routing = evidence.routing(key)
        description = _dict(routing["task_json"]).get("description") if routing else None
        if description and len(description) > len(task or ""):
            evidence.used["routing_outcomes"].add(routing["id"])
            return description, task
    return task, None


def _experience(r: dict, ev: Evidence) -> dict:
    routing = _dict(r["routing_json"])
    result = _json(r["result_json"])
    result_dict = result if isinstance(result, dict) else {}
    replay = r.get("source") == "experience-replay"
    answer, shape = answer_from_result(result)
    if answer is None:
        why = (
            "experience-replay: a strategy summary of a past run, not an answer (the run is in qe_trajectories)"
            if replay
            else f"failed: {r['error']}" if r.get("error")
            else f"{r.get('source')} event: agentic-qe recorded no result for it"
        )
        raise InvalidRow("no_answer", why)

    outcome_row = ev.routing(result_dict.get("taskId"))
    task, abbreviated = _full_task(r["task"], ev, result_dict.get("taskId"))
    tests = [t for t in result_dict.get("tests") or [] if isinstance(t, dict)]
    sources = sorted({t["sourceFile"] for t in tests if t.get("sourceFile")})
    if sources and abbreviated is None and result_dict.get("language"):
        # The tool call's source code is not stored; the file and language at least tell tasks apart.
        task = f"{task}\nSource: {', '.join(sources)} ({result_dict['language']})"
    metadata = {
        "aqe_table": "captured_experiences",
        "aqe_source": r.get("source"),
        "aqe_task": abbreviated,
        "answer_shape": shape,
        "model_tier": r.get("model_tier", routing.get("tier")),
        "application_count": r.get("application_count"),
        "consolidation_count": r.get("consolidation_count"),
        "consolidated_into": r.get("consolidated_into"),
        "result": result_dict or None,
        "generation_mode": result_dict.get("generationMode"),
        "llm_enhanced": result_dict.get("llmEnhanced"),
        "executed": ev.executed_tests([t.get("name") for t in tests], r["completed_at"]) if tests else None,
    }
    if replay:
        # Experience replay reuses the columns: `agent` holds the strategy text, `routing_json` its metrics.
        metadata.update(strategy=r["agent"], replay_metrics=routing)

    # The model that answered: routing_json.modelId, else the tier agentic-qe routed the task to.
    if routing.get("modelId"):
        model, metadata["model_source"] = routing["modelId"], "routing_json.modelId"
    elif outcome_row and outcome_row.get("model_tier") in CLAUDE_TIERS:
        ev.used["routing_outcomes"].add(outcome_row["id"])
        model, metadata["model_source"] = f"claude-{outcome_row['model_tier']}", "routing_outcomes.model_tier"
    else:
        model, metadata["model_source"] = "unknown", None
    # No confidence column: the answering agent's own (aiInsights), else SONA's record of this experience.
    confidence = (result_dict.get("aiInsights") or {}).get("confidence")
    metadata["confidence_source"] = "result_json.aiInsights.confidence"
    if confidence is None and r["id"] in ev.sona:
        ev.used["sona_patterns"].add(ev.sona[r["id"]]["id"])
        confidence, metadata["confidence_source"] = ev.sona[r["id"]]["confidence"], "sona_patterns.confidence"
    if confidence is None:
        confidence, metadata["confidence_source"] = AQE_DEFAULT_CONFIDENCE, "default"
    # Reuse: feedback counters and the applications log record the same reuses; neither is complete
    # alone (the counters stay 0 when reuse goes through the log), so take the larger, never the sum.
    # application_count is not reuse: consolidation bumps it.
    applications = ev.applications.get(r["id"], [])
    ev.used["experience_applications"].update(a["id"] for a in applications)
    uses = max((r.get("reuse_success_count") or 0) + (r.get("reuse_failure_count") or 0), len(applications))
    successes = max(r.get("reuse_success_count") or 0, sum(1 for a in applications if a["success"]))
    updated = max(filter(None, [r.get("completed_at"), r.get("last_applied_at"), r.get("quality_updated_at")]), default=None)
    blob = r.get("embedding")
    return dict(
        id=r["id"], task=task, output=answer, domain=r.get("domain") or "",
        agent="experience-replay" if replay else r.get("agent"),
        model=model, outcome="success" if r.get("success") else "failure",
        quality=r.get("quality"), confidence=confidence, usage_count=uses, success_count=min(successes, uses),
        latency_ms=r.get("duration_ms"), language=result_dict.get("language"),
        embedding=_vector(blob), embedding_dim=r.get("embedding_dimension") if blob else None,
        embedding_model=AQE_VECTOR_MODEL if blob else None, embedding_text=EXPERIENCE_EMBEDS if blob else None,
        created_at=r.get("started_at"), updated_at=updated, metadata=metadata,
    )


def _pattern(r: dict, ev: Evidence) -> dict:
    template = _dict(r.get("template_json"))
    context = _dict(r.get("context_json"))
    answer = template.get("content") if isinstance(template.get("content"), str) else None
    if not answer or not answer.strip():
        raise InvalidRow("no_answer", "pattern without template content")
    log = ev.pattern_usage.get(r["id"], [])
    ev.used["qe_pattern_usage"].update(str(u["id"]) for u in log)
    # The usage log holds reuses recorded through feedback; patterns made by consolidation start with
    # their sources' counts and no log rows. Take the larger of column and log, never the sum.
    uses = max(r.get("usage_count") or 0, len(log))
    successes = max(r.get("successful_uses") or 0, sum(1 for u in log if u["success"]))
    # success_rate defaults to 0.0: for a pattern never used that means "no outcome", not "failed".
    outcome = "unknown" if uses == 0 else "success" if (r.get("success_rate") or 0) >= 0.5 else "failure"
    vector = ev.pattern_vectors.get(r["id"])
    if vector:
        ev.used["qe_pattern_embeddings"].add(r["id"])
    return dict(
        id=r["id"], task="\n".join(filter(None, [r.get("name"), r.get("description")])), output=answer,
        domain=r.get("qe_domain") or r.get("domain") or "", agent=r.get("pattern_type"),
        model=context.get("model") or "unknown", outcome=outcome, quality=r.get("quality_score"),
        confidence=r.get("confidence"), usage_count=uses, success_count=min(successes, uses),
        input_tokens=r.get("input_tokens"), output_tokens=r.get("output_tokens"), latency_ms=r.get("latency_ms"),
        framework=context.get("framework"),
        embedding=_vector(vector["embedding"]) if vector else None,
        embedding_dim=vector["dimension"] if vector else None,
        embedding_model=vector["model"] if vector else None,
        embedding_text=PATTERN_EMBEDS if vector else None,
        created_at=r.get("created_at"), updated_at=r.get("updated_at"),
        metadata={
            "aqe_table": "qe_patterns", "pattern_type": r.get("pattern_type"), "tier": r.get("tier"),
            "tags": context.get("tags"), "template_type": template.get("type"),
            "aqe_space_id": vector["space_id"] if vector else None,
            "usage_log": {"uses": len(log), "successes": sum(1 for u in log if u["success"]),
                          "last": max((u["created_at"] for u in log), default=None)},
            "last_used_at": r.get("last_used_at"),
        },
    )


def _steps(t: dict, ev: Evidence) -> list[dict]:
    """trajectory_steps rows when agentic-qe wrote them; otherwise the steps_json copy (hook runs
    write only `{step, task, success}` there)."""
    rows = ev.steps.get(t["id"])
    if rows:
        return [
            dict(action=s["action"], outcome=s["outcome"], quality=s.get("quality"), duration_ms=s.get("duration_ms"),
                 tokens=s.get("tokens_used"), error=s.get("error_message"), result=s.get("result_data"))
            for s in rows
        ]
    steps = []
    for s in _json(t.get("steps_json")) or []:
        if not isinstance(s, dict):
            continue
        result = s.get("result") if isinstance(s.get("result"), dict) else {}
        outcome = result.get("outcome") or ("success" if s.get("success") else "failure")
        steps.append(dict(action=s.get("action") or f"step {s.get('step')}", outcome=outcome,
                          quality=s.get("quality"), duration_ms=s.get("durationMs"), tokens=s.get("tokensUsed"),
                          error=result.get("error"), result=result.get("data")))
    return steps


def _trajectory(t: dict, ev: Evidence) -> dict:
    steps = _steps(t, ev)
    meta = _dict(t.get("metadata_json"))
    metrics = meta.get("metrics") or {}
    answer, shape, step = None, "none", None
    for step in reversed([s for s in steps if s["outcome"] == "success" and s.get("result")]):
        answer, shape = answer_from_result(_json(step["result"]))
        if answer:
            break
    if not answer:
        failed = next((s for s in reversed(steps) if s.get("error")), None)
        why = f"last step '{failed['action']}' failed: {failed['error']}" if failed else "no step produced a result"
        raise InvalidRow("no_answer", f"trajectory: {why}")
    ev.used["trajectory_steps"].update(s["id"] for s in ev.steps.get(t["id"], []))
    task, abbreviated = _full_task(t["task"], ev)
    qualities = [s["quality"] for s in steps if s.get("quality") is not None]
    quality = metrics.get("averageQuality", sum(qualities) / len(qualities) if qualities else None)
    context = meta.get("context") or {}
    success = t.get("success")
    blob = t.get("embedding")
    return dict(
        id=t["id"], task=task, output=answer, domain=t.get("domain") or "", agent=t.get("agent"),
        model=meta.get("model") or "unknown",
        outcome="unknown" if success is None else "success" if success else "failure",
        quality=quality, confidence=AQE_DEFAULT_CONFIDENCE, language=context.get("language"),
        output_tokens=metrics.get("totalTokensUsed"), latency_ms=metrics.get("totalDurationMs"),
        embedding=_vector(blob), embedding_dim=len(blob) // 4 if blob else None,
        embedding_model=AQE_VECTOR_MODEL if blob else None, embedding_text=EXPERIENCE_EMBEDS if blob else None,
        created_at=t.get("started_at"), updated_at=t.get("ended_at"), steps=steps,
        metadata={
            "aqe_table": "qe_trajectories", "aqe_task": abbreviated, "answer_step": step["action"],
            "answer_shape": shape, "feedback": t.get("feedback"), "metrics": metrics or None,
            "context": context or None, "confidence_source": "default",
        },
    )


def read_store(conn) -> tuple[dict[str, list[tuple[str, object]]], dict[str, dict]]:
    """(per trajectory table: (raw text, row or InvalidRow) pairs, per joined table: rows read and joined)."""
    ev = Evidence(conn)
    mappers = {"captured_experiences": _experience, "qe_patterns": _pattern, "qe_trajectories": _trajectory}
    records: dict[str, list[tuple[str, object]]] = {}
    for table, mapper in mappers.items():
        records[table] = []
        for r in _rows(conn, table):
            source = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in r.items()}
            raw = json.dumps({"aqe_table": table, **source}, sort_keys=True, default=str)
            try:
                row = mapper(r, ev)
            except InvalidRow as err:
                err.row_id = r["id"]
                records[table].append((raw, err))
                continue
            row = {k: v for k, v in row.items() if v is not None}
            row["metadata"] = {k: v for k, v in row["metadata"].items() if v is not None}
            records[table].append((raw, row))
    joined = {t: {"read": ev.counts[t], "joined": len(ev.used[t])} for t in JOINED_TABLES}
    return records, joined


def is_agentic_qe_store(conn) -> bool:
    return bool(_tables(conn) & set(TRAJECTORY_TABLES))
