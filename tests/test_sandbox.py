"""The sandbox and the test-generation scorer, on hand-made good and bad outputs.

Each hostile suite is a real attempt (sockets, subprocesses, deleting a file outside the
sandbox, runaway loops and allocations); the assertions check it was stopped and reported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import threading

import pytest

from qeforge.demo import generate_demo_lines
from qeforge.evaluation import sandbox, test_generation
from qeforge.evaluation.sandbox import WEAK_ISOLATION, SandboxLimits, isolation_summary, run_many, run_tests
from qeforge.evaluation.test_generation import extract_tests, make_mutants, score_test_generation

FOCAL = '''def clamp(x, lo, hi):
    """x limited to [lo, hi]."""
    if lo > hi:
        raise ValueError("empty range")
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''
META = {"focal_code": FOCAL, "entry_point": "clamp", "module": "focal"}

GOOD = '''Here are the tests:

```python
import pytest
from focal import clamp


def test_inside():
    assert clamp(5, 0, 10) == 5


def test_below():
    assert clamp(-3, 0, 10) == 0


def test_above():
    assert clamp(42, 0, 10) == 10


def test_empty_range_raises():
    with pytest.raises(ValueError):
        clamp(1, 5, 0)
```
'''
FAST = SandboxLimits(timeout_s=3)


def suite(body: str) -> str:
    return f"```python\n{body}\n```"


@pytest.mark.slow
def test_good_suite_passes_covers_and_kills_mutants():
    row = score_test_generation(GOOD, META, limits=FAST)
    assert (row["syntax_valid"], row["n_tests"], row["pass_rate"], row["sandbox_status"]) == (1, 4, 1.0, "ok")
    assert row["line_coverage"] == 1.0 and row["edge_coverage"] == 1.0
    assert row["mutation_score"] > 0
    assert row["rubric_score"] >= 8
    assert row["sandbox_ran"] and not row["escaped"] and row["blocked"] == []
    assert set(json.loads(json.dumps(row))) == set(row)  # JSON-friendly


@pytest.mark.slow
def test_wrong_expectation_fails_and_scores_lower():
    good = score_test_generation(GOOD, META, limits=FAST, n_mutants=0)
    bad = score_test_generation(GOOD.replace("== 10", "== 11"), META, limits=FAST, n_mutants=0)
    assert bad["pass_rate"] == 0.75
    assert bad["mutation_score"] == 0.0
    assert bad["rubric_score"] < good["rubric_score"]


def test_syntax_error_scores_zero_without_running(monkeypatch):
    monkeypatch.setattr(test_generation, "run_tests", lambda *a, **k: pytest.fail("sandbox must not run"))
    for output in (suite("def test_x(:\n    assert clamp(1, 0, 2) == 1"), "no code here", suite("x = 1")):
        row = score_test_generation(output, META)
        assert (row["syntax_valid"], row["rubric_score"], row["sandbox_ran"]) == (0, 0.0, False)


@pytest.mark.slow
def test_collection_error_and_no_tests_are_reported():
    assert run_tests("from nowhere import clamp\ndef test_x():\n    pass\n", FOCAL, limits=FAST).status == "collection_error"
    assert run_tests("def helper():\n    pass\n", FOCAL, limits=FAST).status == "no_tests"


@pytest.mark.slow
@pytest.mark.parametrize("ignores_alarm", [False, True], ids=["child-alarm", "parent-kill"])
def test_endless_test_times_out_and_its_process_group_is_gone(monkeypatch, ignores_alarm):
    pids = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    # Ignoring SIGALRM defeats the child's own budget, leaving the parent's deadline to kill it.
    prelude = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n" if ignores_alarm else ""
    result = run_tests(prelude + "def test_forever():\n    while True:\n        pass\n", FOCAL, limits=FAST)
    assert result.status == "timeout"
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


@pytest.mark.slow
def test_network_is_blocked():
    tests = (
        "import socket\n"
        "def test_connect():\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
        "def test_bind():\n    socket.socket().bind(('127.0.0.1', 0))\n"
    )
    result = run_tests(tests, FOCAL, limits=FAST)
    assert (result.status, result.failed, result.passed) == ("ok", 2, 0)
    assert any(b.startswith("socket.getaddrinfo") or b.startswith("socket.connect") for b in result.blocked)
    assert any(b.startswith("socket.__new__") for b in result.blocked)
    assert not result.escaped


@pytest.mark.slow
def test_writes_outside_the_sandbox_are_blocked(tmp_path):
    victim = tmp_path / "victim" / "keep.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    tests = (
        "import os, shutil\n"
        f"def test_remove():\n    os.remove({str(victim)!r})\n"
        f"def test_rmtree():\n    shutil.rmtree({str(victim.parent)!r})\n"
        f"def test_overwrite():\n    open({str(victim)!r}, 'w').write('gone')\n"
        "def test_inside_is_fine(tmp_path):\n    (tmp_path / 'x').write_text('ok')\n    os.remove(tmp_path / 'x')\n"
    )
    result = run_tests(tests, FOCAL, limits=FAST)
    assert victim.read_text() == "precious"
    assert (result.failed, result.passed) == (3, 1)
    assert f"os.remove {victim}" in result.blocked
    assert any(b.startswith("shutil.rmtree") for b in result.blocked)
    assert f"open {victim}" in result.blocked
    assert not result.escaped


@pytest.mark.slow
def test_processes_and_native_code_are_blocked():
    tests = (
        "import os, subprocess\n"
        "def test_run():\n    subprocess.run(['ls'])\n"
        "def test_system():\n    assert os.system('ls') == 0\n"
        "def test_ctypes():\n    import ctypes\n"
        "def test_raw_fork_exec():\n    import _posixsubprocess\n"
    )
    result = run_tests(tests, FOCAL, limits=FAST)
    assert (result.failed, result.passed) == (4, 0)
    for event in ("subprocess.Popen", "os.system", "import ctypes", "import _posixsubprocess"):
        assert any(b.startswith(event) for b in result.blocked), event


@pytest.mark.slow
def test_huge_allocation_is_contained():
    tests = "def test_hog():\n    data = b'x' * (2 << 30)\n    assert data\n\ndef test_after():\n    assert True\n"
    result = run_tests(tests, FOCAL, limits=SandboxLimits(timeout_s=3, memory_mb=512))
    assert result.status in ("ok", "crash")
    if result.status == "ok":  # the MemoryError failed one test and the child went on
        assert (result.failed, result.passed) == (1, 1)
        assert "MemoryError" in result.log_tail


@pytest.mark.slow
def test_dead_child_still_reports_what_it_measured():
    tests = "import faulthandler\ndef test_a():\n    pass\ndef test_b():\n    faulthandler._sigsegv()\ndef test_c():\n    pass\n"
    result = run_tests(tests, FOCAL, limits=FAST)
    assert (result.status, result.n_tests, result.passed) == ("crash", 3, 1)
    assert "sandbox_harness.py" in result.log_tail  # faulthandler's stack of the dead child


@pytest.mark.slow
def test_run_many_keeps_order_and_runs_jobs_at_once(monkeypatch):
    # Each job waits at a two-party barrier before it runs: it only gets through when a second job
    # is in flight at the same time, so serial execution fails with BrokenBarrierError, not a timing.
    barrier = threading.Barrier(2, timeout=120)
    real_run_tests = sandbox.run_tests

    def paired_run_tests(**job):
        barrier.wait()
        return real_run_tests(**job)

    monkeypatch.setattr(sandbox, "run_tests", paired_run_tests)
    jobs = [{"test_source": f"from focal import clamp\ndef test_x():\n    assert clamp({v}, 0, 10) == 5\n", "focal_source": FOCAL}
            for v in (5, 99, 5, -1)]
    results = run_many(jobs, processes=2, limits=FAST)
    assert [r.passed for r in results] == [1, 0, 1, 0]


def test_make_mutants_is_deterministic_and_distinct():
    mutants = make_mutants(FOCAL, n=5, seed=7)
    assert mutants == make_mutants(FOCAL, n=5, seed=7)
    assert len(mutants) == len(set(mutants)) == 5
    original = ast.unparse(ast.parse(FOCAL))
    for code in mutants:
        compile(code, "mutant.py", "exec")
        assert code != original
    assert make_mutants("def f(:", n=3) == []


def test_extract_tests_picks_the_python_block():
    assert extract_tests("```bash\nls\n```\n```python\ndef test_a():\n    pass\n```") == "def test_a():\n    pass\n"
    assert extract_tests("def test_a():\n    assert 1\n") == "def test_a():\n    assert 1\n"
    assert extract_tests("just prose, def test_ mentioned") is None


@pytest.mark.slow
def test_demo_success_output_passes():
    rows = []
    for line in generate_demo_lines(60, with_embeddings=False):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the demo export carries deliberately broken lines
    row = next(r for r in rows if r.get("category") == "test-generation" and r.get("outcome") == "success")
    scores = score_test_generation(row["output"], row["metadata"])
    assert scores["sandbox_status"] == "ok"
    assert scores["pass_rate"] == 1.0


@pytest.mark.slow
def test_without_bubblewrap_the_isolation_is_called_weak():
    row = score_test_generation(GOOD, META, limits=SandboxLimits(timeout_s=3, use_bwrap=False), n_mutants=0)
    assert (row["sandbox_status"], row["pass_rate"], row["sandbox_isolation"]) == ("ok", 1.0, "weak")
    assert "weak isolation" in isolation_summary([row["sandbox_isolation"], "bubblewrap", None])
    assert isolation_summary(["bubblewrap"]).startswith("bubblewrap") and isolation_summary([None]) is None
    with pytest.raises(ValueError, match="needs bubblewrap"):  # no run without any guard at all
        run_tests(GOOD, FOCAL, limits=SandboxLimits(use_bwrap=False, audit_hook=False))


def test_weak_isolation_is_said_in_the_report_and_the_model_card():
    from qeforge.evaluation.report import format_report
    from qeforge.model_card import build_card

    ci = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    summary = {"quality_ratio": ci, "meets_target": False, "n_paired": 3, "n_eval": 3, "target_ratio": 0.95,
               "eval_split": "test", **{f"{w}_score": ci for w in ("base", "adapter", "claude")},
               "sandbox_isolation": WEAK_ISOLATION}
    routing = {"confirmed": {"local_share": 0.5, "quality_ratio": 0.5, "savings_per_1k": 0.1, "quality_ratio_low": 0.4,
                             "quality_ratio_high": 0.6}, "signal_auroc": {}, "cpt": {"50": 1, "80": 1, "95": 1}, "apgr": 0.5}
    card = build_card("test-generation", training={}, summary=summary, routing=routing,
                      policy={"threshold": 0.1, "signal": "mean_logprob"}, dataset={"version": "v"}, tags={})
    assert "weak isolation" in card
    row = {"adapter_score": 1, "base_score": 1, "claude_score": 1, "quality_ratio": ci, "meets_target": False,
           "target_ratio": 0.95, "signal": "s", "threshold": 0.1, "local_share": 0.5, "routed_quality_ratio": 0.5,
           "savings_per_1k_usd": 0.1, "cpt_95": 1, "apgr": 0.5, "sandbox_isolation": WEAK_ISOLATION,
           "n_eval": 3, "n_unscorable": 0, "unscorable_reasons": {}}
    report = format_report({"policy_version": "p", "overall": {}, "categories": {"test-generation": row}})
    assert "test-generation: weak isolation" in report


def test_coverage_is_computed_from_arcs_the_focal_code_has():
    real = [(-1, 1), (1, -1)]  # the module's def statement ran
    assert sandbox._coverage(FOCAL, real)[0] == pytest.approx(1 / 8)  # 1 of its 8 statements
    bogus = [(a, b) for a in range(100, 140) for b in range(100, 140)]
    assert sandbox._coverage(FOCAL, bogus) == (0.0, 0.0, [])


def test_a_second_final_record_or_a_wrong_exit_voids_the_run():
    final = {"n_tests": 1, "passed": 1, "failed": 0, "timed_out": False, "collection_error": False, "exit_code": 0, "arcs": []}
    line = json.dumps({"final": final}) + "\n"
    assert sandbox._read_records(line, "", False, 1.0, True).passed_all
    assert sandbox._read_records(line, "", False, 1.0, False).status == "crash"
    assert sandbox._read_records(line * 2, "", False, 1.0, True).status == "crash"
    forged = json.dumps({"final": {**final, "passed": 5}}) + "\n"
    assert sandbox._read_records(forged, "", False, 1.0, True).status == "crash"  # more passes than tests


def test_the_control_variant_keeps_behaviour_and_changes_the_code():
    control = sandbox.control_variant(sandbox._normalise(FOCAL))
    assert control != sandbox._normalise(FOCAL) and "lo > x" in control and "hi < lo" in control
    namespace: dict = {}
    exec(control, namespace)
    assert [namespace["clamp"](x, 0, 10) for x in (-3, 5, 42)] == [0, 5, 10]
