"""The demo ReasoningBank: deterministic, realistic, and its ground truth is true."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import pytest

from qeforge.categories import CATEGORIES
from qeforge.demo import BROKEN_KINDS, CATEGORY_SHARES, generate_demo_lines, write_demo_jsonl
from qeforge.demo.corruption import EXPECTED_REASONS
from qeforge.demo.line_coverage import executable_lines, traced_lines
from qeforge.schema import InvalidRow, validate_row

N = 300


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return generate_demo_lines(N, seed=3, with_embeddings=False)


@pytest.fixture(scope="module")
def parsed(lines):
    """(valid rows, reason counts); reason 'json' for lines json.loads rejects."""
    valid, reasons = [], collections.Counter()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            reasons["json"] += 1
            continue
        try:
            validate_row(row)
        except InvalidRow as exc:
            reasons[exc.reason] += 1
            continue
        valid.append(row)
    return valid, reasons


def _category(row: dict) -> str:
    """Ground-truth category, also for rows that omit it (the metadata tells the kind)."""
    if row.get("category"):
        return row["category"]
    meta = row["metadata"]
    if "focal_code" in meta:
        return "test-generation"
    if "executable_lines" in meta:
        return "coverage-analysis"
    if "label" in meta:
        return "flaky-detection"
    assert "issue_type" in meta
    return "code-review"


def _without_embedding(line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(row, dict):
        for key in ("embedding", "embedding_model", "embedding_dim"):
            row.pop(key, None)
    return json.dumps(row)


def _fenced_python(text: str) -> str:
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text
    return match.group(1)


def test_deterministic_and_seed_sensitive(lines):
    assert generate_demo_lines(N, seed=3, with_embeddings=False) == lines
    other = generate_demo_lines(N, seed=4, with_embeddings=False)
    assert len(other) == N
    assert other != lines
    assert len(set(other) & set(lines)) < N // 10


def test_write_demo_jsonl(tmp_path):
    path = write_demo_jsonl(tmp_path / "bank.jsonl", n=40, seed=1, with_embeddings=False)
    assert path.read_text(encoding="utf-8").splitlines() == generate_demo_lines(40, seed=1, with_embeddings=False)


def test_category_mix_models_and_missing_categories(parsed):
    valid, _ = parsed
    shares = collections.Counter(_category(r) for r in valid)
    assert set(shares) == set(CATEGORIES)
    for category, target in CATEGORY_SHARES.items():
        assert abs(shares[category] / len(valid) - target) < 0.05, (category, shares)
    missing = sum("category" not in r for r in valid) / len(valid)
    assert 0.08 < missing < 0.25
    models = collections.Counter(r["model"] for r in valid)
    assert 0.45 < models["claude-sonnet-4-6"] / len(valid) < 0.65
    assert {"claude-opus-4-1", "phi-4", "qwen3:8b", "llama3.1:8b"} <= set(models)
    assert {r["outcome"] for r in valid} == {"success", "failure", "partial", "skipped"}


def test_every_broken_kind_is_rejected(lines, parsed):
    valid, reasons = parsed
    expected = {r for r in EXPECTED_REASONS.values() if r} | {"json"}
    assert expected <= set(reasons), expected - set(reasons)
    # Nothing else is broken: every rejected line is one of the planted kinds.
    assert set(reasons) <= expected
    ids = collections.Counter(r["id"] for r in valid)
    reused = [i for i, c in ids.items() if c > 1]
    assert reused, "no duplicate-id rows"
    for row_id in reused:
        rows = [r for r in valid if r["id"] == row_id]
        assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)
    broken = sum(reasons.values()) + sum(c - 1 for c in ids.values())
    assert 0.04 <= broken / len(lines) <= 0.09
    assert len(BROKEN_KINDS) >= 13


def test_quality_spread_and_gate_share(lines, parsed):
    valid, _ = parsed
    gate = [r for r in valid if r["outcome"] == "success" and r["quality"] >= 0.8 and r["confidence"] >= 0.8 and r["usage_count"] >= 3]
    assert 0.38 <= len(gate) / len(lines) <= 0.57
    for row in valid:
        assert row["success_count"] <= row["usage_count"] <= 30
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["latency_ms"] > 0
        assert "reward" not in row or -1 <= row["reward"] <= 1
    mean = lambda rows: sum(r["quality"] for r in rows) / len(rows)  # noqa: E731
    claude = [r for r in valid if r["model"].startswith("claude") and r["outcome"] == "success"]
    local = [r for r in valid if not r["model"].startswith("claude") and r["outcome"] == "success"]
    failures = [r for r in valid if r["outcome"] == "failure"]
    assert mean(local) < mean(claude)
    assert max(r["quality"] for r in failures) < 0.5 < min(r["quality"] for r in claude)


def test_duplicates_point_at_earlier_rows_and_differ_in_score(parsed):
    valid, _ = parsed
    by_id = {}
    for row in valid:
        by_id.setdefault(row["id"], row)  # a reused id's second row is an impostor
    dups = [r for r in valid if "demo_duplicate_of" in r["metadata"]]
    assert 0.07 < len(dups) / len(valid) < 0.16
    rescored = 0
    for dup in dups:
        original = by_id[dup["metadata"]["demo_duplicate_of"]]
        assert original["id"] < dup["id"]
        assert _category(original) == _category(dup)
        rescored += (original["quality"], original["usage_count"]) != (dup["quality"], dup["usage_count"])
    assert rescored > len(dups) // 2
    # Near-duplicates: different wording, same behaviour (same label / same uncovered lines ...).
    near = [d for d in dups if d["task"].split() != by_id[d["metadata"]["demo_duplicate_of"]]["task"].split()]
    assert near


@pytest.mark.slow
def test_generated_tests_really_pass_and_bad_ones_fail(parsed, tmp_path):
    valid, _ = parsed
    tg = [r for r in valid if _category(r) == "test-generation"]
    good = [r for r in tg if r["outcome"] == "success"][:4]
    bad = [r for r in tg if r["outcome"] == "failure"][:2]
    assert len(good) == 4 and len(bad) == 2
    for i, row in enumerate(good + bad):
        meta = row["metadata"]
        assert meta["module"] == "focal" and meta["entry_point"] in row["task"]
        assert meta["focal_code"] in row["task"]
        work = tmp_path / f"case{i}"
        work.mkdir()
        (work / "focal.py").write_text(meta["focal_code"])
        (work / "test_focal.py").write_text(_fenced_python(row["output"]))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_focal.py"],
            cwd=work, capture_output=True, text=True, timeout=60,
        )
        if row["outcome"] == "success":
            assert result.returncode == 0, result.stdout + result.stderr
            assert re.search(r"\d+ passed", result.stdout)
        else:
            assert result.returncode != 0, result.stdout


@pytest.mark.slow
def test_many_distinct_focal_functions():
    focal = set()
    for line in generate_demo_lines(1500, seed=0, with_embeddings=False):
        if '"focal_code"' in line and line.endswith("}"):
            focal.add(json.loads(line)["metadata"]["focal_code"])
    assert len(focal) >= 150


def test_flaky_labels_and_verdicts(parsed):
    valid, _ = parsed
    flaky = [r for r in valid if _category(r) == "flaky-detection"]
    labels = collections.Counter(r["metadata"]["label"] for r in flaky)
    assert set(labels) == {"flaky", "not-flaky"}
    assert 0.45 < labels["flaky"] / len(flaky) < 0.75
    for row in flaky:
        meta = row["metadata"]
        assert (meta["cause"] is None) == (meta["label"] == "not-flaky")
        if row["outcome"] in ("success", "failure"):
            verdict = re.match(r"Verdict: (flaky|not-flaky)\n", row["output"])
            assert verdict, row["output"]
            assert (verdict.group(1) == meta["label"]) == (row["outcome"] == "success")
            if row["outcome"] == "success" and meta["cause"]:
                assert f"Cause: {meta['cause']}\n" in row["output"]


def test_coverage_listings_are_consistent_and_real(parsed):
    valid, _ = parsed
    cov = [r for r in valid if _category(r) == "coverage-analysis"]
    assert any(r["metadata"]["uncovered_lines"] for r in cov)
    for row in cov:
        meta = row["metadata"]
        executable, covered, uncovered = (set(meta[k]) for k in ("executable_lines", "covered_lines", "uncovered_lines"))
        assert covered | uncovered == executable and not covered & uncovered
        if row["outcome"] == "success":
            listed = re.match(r"Uncovered lines: (.*)\n", row["output"]).group(1)
            assert listed == (", ".join(map(str, meta["uncovered_lines"])) or "none")
        elif row["outcome"] == "failure":
            listed = re.match(r"Uncovered lines: (.*)", row["output"]).group(1)
            assert listed != (", ".join(map(str, meta["uncovered_lines"])) or "none")
    # Re-derive one row's coverage from the task text alone.
    row = next(r for r in cov if r["metadata"]["uncovered_lines"])
    listing = re.search(r"```\n(.*?)\n```", row["task"], re.S).group(1)
    source = "\n".join(line.split(" | ", 1)[1] if " | " in line else "" for line in listing.splitlines()) + "\n"
    tests = _fenced_python(row["task"])
    executable = executable_lines(source)
    assert sorted(executable) == row["metadata"]["executable_lines"]
    assert sorted(traced_lines(source, tests) & executable) == row["metadata"]["covered_lines"]


@pytest.mark.slow
def test_coverage_agrees_with_coverage_py(parsed, tmp_path):
    valid, _ = parsed
    row = next(r for r in valid if _category(r) == "coverage-analysis" and len(r["metadata"]["uncovered_lines"]) >= 2)
    listing = re.search(r"```\n(.*?)\n```", row["task"], re.S).group(1)
    (tmp_path / "focal.py").write_text("\n".join(line.split(" | ", 1)[1] if " | " in line else "" for line in listing.splitlines()) + "\n")
    (tmp_path / "test_focal.py").write_text(_fenced_python(row["task"]))
    run = [sys.executable, "-m", "coverage"]
    subprocess.run([*run, "run", "--include=focal.py", "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    subprocess.run([*run, "json", "-o", "cov.json"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    report = json.loads((tmp_path / "cov.json").read_text())["files"]["focal.py"]
    assert report["missing_lines"] == row["metadata"]["uncovered_lines"]


def test_code_review_issues_are_named_by_line(parsed):
    valid, _ = parsed
    reviews = [r for r in valid if _category(r) == "code-review"]
    kinds = {r["metadata"]["issue_type"] for r in reviews}
    assert len(kinds) >= 6
    for row in reviews:
        lines = row["metadata"]["issue_lines"]
        assert lines and "```diff\n" in row["task"]
        hunk = re.search(r"@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", row["task"])
        start, length = int(hunk.group(1)), int(hunk.group(2) or 1)
        assert all(start <= n < start + length for n in lines)
        if row["outcome"] == "success":
            assert row["output"].startswith(f"Line {lines[0]}")


@pytest.mark.slow
def test_small_demo_with_real_embeddings():
    from qeforge.embedding import embed_texts

    lines = generate_demo_lines(40, seed=5, with_embeddings=True)
    # Embeddings are added on top: everything else is the same as without them.
    assert [_without_embedding(x) for x in lines] == [
        _without_embedding(x) for x in generate_demo_lines(40, seed=5, with_embeddings=False)
    ]
    rows = []
    for line in lines:
        try:
            rows.append(validate_row(json.loads(line)))
        except (InvalidRow, json.JSONDecodeError):
            continue
    minilm = [r for r in rows if r["embedding_dim"] == 384]
    assert minilm and all(r["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2" for r in minilm)
    assert sum(r["embedding"] is None for r in rows) > len(rows) / 3
    fresh = embed_texts([minilm[0]["task"]])[0]
    assert max(abs(a - b) for a, b in zip(fresh, minilm[0]["embedding"])) < 1e-4
