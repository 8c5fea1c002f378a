"""Recorded exchanges -> trajectories: the fleet's real prompts, with Claude's answers, as training rows.

The gateway records every call (serving/recording.py) and the fleet's verdicts on answers (POST
/v1/feedback). The policy, in one place:
- A Claude answer to a real fleet prompt is a reference: outcome success, quality and confidence 1.0,
  unless feedback says otherwise (a failure makes the row fail the gate's outcome condition; a quality
  replaces the 1.0). The gate does not ask a reference for reuse (gate.py, `reference_sources`).
- A local answer (`local`, `local_fallback`) becomes a row only when feedback marked it a success:
  the adapters never learn from their own unchecked answers.
- Declined calls (no answer), answers without text (tool calls only) and qeforge's own checks
  (caller `qeforge-smoke-check`) never become rows.
The task is the user turns, joined: the text the router embeds to place a call (signals.user_text),
so the classifier and the known-good neighbours are built from what the router will compare. The
system prompt and every turn go along in `metadata.exchange`, and training renders them exactly as
they were sent (export.to_messages). The router's category is kept; "none" is left to curation's
classifier, which may leave it none (categorize.place).
"""

from __future__ import annotations

import json
from collections import Counter

from qeforge.categories import CATEGORIES

SOURCE = "exchanges"  # the `source` of every row this module makes
SMOKE_CHECK_CALLER = "qeforge-smoke-check"  # the main job's serving check (serving/smoke.py)
OWN_CALLERS = (SMOKE_CHECK_CALLER,)  # X-QEForge-Caller of qeforge's own calls: not the fleet's traffic
LOCAL_DECISIONS = ("local", "local_fallback")


def turn_text(content) -> str:
    """A turn's text: the string, or its text blocks joined (images and tool blocks carry none)."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def latest_feedback(feedback: list[dict]) -> dict[str, dict]:
    """exchange_id -> its latest feedback row (a later verdict replaces an earlier one)."""
    return {r["exchange_id"]: r for r in sorted(feedback, key=lambda r: r["received_at"])}


def skip_reason(row: dict, verdict: dict | None) -> str | None:
    """Why an exchange makes no trajectory, or None when it makes one."""
    if row["answer"] is None or row["status"] != 200:
        return "declined"
    if (row.get("caller") or "") in OWN_CALLERS:
        return "own_check"
    if not row["answer"].strip():
        return "no_text_answer"
    if row["decision"] in LOCAL_DECISIONS and (verdict is None or verdict["outcome"] != "success"):
        return "local_unmarked"
    return None


def exchange_trajectory(row: dict, verdict: dict | None) -> dict:
    """One exchanges-table row (and its latest feedback) as an importable trajectory."""
    turns = json.loads(row["messages"])
    task = "\n".join(turn_text(t["content"]) for t in turns if t["role"] == "user")
    failed = verdict is not None and verdict["outcome"] == "failure"
    quality = verdict["quality"] if verdict is not None and verdict["quality"] is not None else (0.0 if failed else 1.0)
    received = row["received_at"]
    return {
        "id": f"exchange-{row['id']}",
        "task": task,
        "output": row["answer"],
        "category": row["category"] if row["category"] in CATEGORIES else None,
        "agent": row.get("caller") or "",
        "model": row["answered_by"],
        "outcome": "failure" if failed else "success",
        "quality": float(quality),
        "confidence": float(quality),
        "input_tokens": row["prompt_tokens"],
        "output_tokens": row["completion_tokens"],
        "latency_ms": None if row["latency_s"] is None else 1000 * row["latency_s"],
        "created_at": received.isoformat(),
        # A verdict that arrives later is an update of the stored row (ingest keeps the older in history).
        "updated_at": (verdict["received_at"] if verdict is not None else received).isoformat(),
        "metadata": {"exchange": {
            "system": row["system"] or "", "messages": turns, "protocol": row["protocol"], "decision": row["decision"],
            "reason": row["reason"], "routed_category": row["category"], "feedback": verdict["outcome"] if verdict else None,
        }},
    }


def exchange_trajectories(exchanges: list[dict], feedback: list[dict]) -> tuple[list[dict], dict]:
    """Rows of the exchanges and feedback tables (as Arrow's to_pylist gives them) -> (trajectories to
    import, counts: read, made, skipped by reason, made by decision, feedback for no recorded exchange)."""
    verdicts = latest_feedback(feedback)
    made, skipped, decisions = [], Counter(), Counter()
    for row in exchanges:
        verdict = verdicts.get(row["id"])
        reason = skip_reason(row, verdict)
        if reason:
            skipped[reason] += 1
            continue
        made.append(exchange_trajectory(row, verdict))
        decisions[row["decision"]] += 1
    report = {"exchanges_read": len(exchanges), "trajectories": len(made), "skipped": dict(sorted(skipped.items())),
              "by_decision": dict(sorted(decisions.items())),
              "feedback_rows": len(feedback), "feedback_unmatched": len(set(verdicts) - {r["id"] for r in exchanges})}
    return made, report


def recorded_messages(metadata: str | None) -> tuple[str, list[dict]] | None:
    """(system as sent, turns as text) when the row came from an exchange; None for a bank row."""
    if not metadata:
        return None
    try:
        exchange = json.loads(metadata).get("exchange")
    except (ValueError, AttributeError):
        return None
    if not isinstance(exchange, dict):
        return None
    return exchange["system"], [{"role": t["role"], "content": turn_text(t["content"])} for t in exchange["messages"]]
