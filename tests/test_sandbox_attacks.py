"""Issue 13's attacks on the test-generation sandbox, each written as a hostile suite would write it.

A hostile test passes inside the sandbox only if its attack worked from the inside; the proof that
counts is on the host: the victim file is intact, nothing appeared outside, no signal arrived, the
listener saw no connection, no process outlived the run, and forged or gamed scores are not paid.
The host-effect attacks need bubblewrap and run with the audit hook on (as in production: these are
the forms that got past it) and off (the OS layer alone). The score attacks hold in either mode: they
are answered by separate runs and by the parent's own accounting. Against the old in-process sandbox
every one of them worked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import tempfile
import uuid
from types import SimpleNamespace

import pytest

from qeforge.evaluation.sandbox import SandboxLimits, bwrap_available, run_tests
from qeforge.evaluation.test_generation import make_mutants, score_test_generation
from tests.test_sandbox import FOCAL, META

pytestmark = pytest.mark.slow  # runs hostile code in sandboxes

needs_bwrap = pytest.mark.skipif(
    not bwrap_available(), reason="bubblewrap missing or user namespaces disabled here (.ci/run installs bubblewrap)")


# Each test below passes only if its attack got through.
HOSTILE = r'''
import os, signal, socket, sqlite3, stat, sys, threading

VICTIM, OUTSIDE, SOCK, MLFLOW_DB = {victim!r}, {outside!r}, {sock!r}, {mlflow_db!r}
HOST_PID, MARKER, TCP_PORT = {host_pid}, {marker!r}, {tcp_port}
DAEMON = f"{{sys.executable}} -c 'import time; time.sleep(120)' {{MARKER}} </dev/null >/dev/null 2>&1 &"


def in_subinterpreter(code):
    """Subinterpreters start with no audit hooks."""
    import _xxsubinterpreters as interpreters
    interp = interpreters.create()
    try:
        interpreters.run_string(interp, code)
    finally:
        interpreters.destroy(interp)


def test_guard_globals_tampered_then_write_and_spawn():
    import __main__ as harness
    for name, value in (("_BLOCKED_EVENTS", frozenset()), ("_PATH_ARGS", {{}}), ("_WRITE_FLAGS", 0)):
        if hasattr(harness, name):
            setattr(harness, name, value)
    fd = os.open(VICTIM, os.O_WRONLY | os.O_TRUNC)  # mode None, flags masked by the emptied _WRITE_FLAGS
    os.write(fd, b"pwned by tampering")
    assert os.system(f"echo pwned > {{OUTSIDE}}/spawned") == 0


def test_dir_fd_write_outside():
    where = os.open(os.path.dirname(VICTIM), os.O_RDONLY)
    fd = os.open(os.path.basename(VICTIM), os.O_WRONLY | os.O_TRUNC, dir_fd=where)
    os.write(fd, b"pwned by dir_fd")


def test_mkfifo_and_mknod_outside():
    os.mkfifo(os.path.join(OUTSIDE, "fifo"))
    os.mknod(os.path.join(OUTSIDE, "node"), stat.S_IFREG | 0o600)


def test_sqlite_attach_and_vacuum_into_outside():
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (a)")
    con.execute(f"VACUUM INTO '{{OUTSIDE}}/vacuum.db'")
    con.execute(f"ATTACH DATABASE '{{OUTSIDE}}/attached.db' AS x")
    con.execute("CREATE TABLE x.t (a)")
    con.commit()


def test_symlink_swap_between_check_and_use():
    open("inside.txt", "w").close()
    stop = []

    def flip():
        while not stop:
            for target in (VICTIM, "inside.txt"):
                try:
                    os.symlink(target, "next")
                    os.replace("next", "link")
                except OSError:
                    pass

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(3000):
            try:
                with open("link", "a") as f:
                    f.write("pwned by a symlink swap")
            except OSError:
                pass
    finally:
        stop.append(True)
        flipper.join()
    assert "pwned" in open(VICTIM).read()


def test_realpath_monkeypatched():
    import posixpath
    posixpath.realpath = lambda path, *a, **k: os.path.join(os.getcwd(), "harmless")
    with open(VICTIM, "w") as f:
        f.write("pwned by realpath")


def test_subinterpreter_runs_os_system():
    in_subinterpreter(f"import os; assert os.system('echo pwned > {{OUTSIDE}}/subinterpreter') == 0")


def test_pidfd_signal_to_the_parent():
    for pid in {{os.getppid(), HOST_PID}}:
        try:
            signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGUSR1)
        except OSError:
            pass
    os.kill(HOST_PID, signal.SIGUSR1)


def test_unix_socket_to_a_host_listener():
    in_subinterpreter(f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({{SOCK!r}}); s.sendall(b'pwned')")


def test_tcp_to_a_host_listener():
    socket.create_connection(("127.0.0.1", TCP_PORT), timeout=2).sendall(b"pwned")


def test_read_etc_shadow():
    assert open("/etc/shadow").read()


def test_read_the_mlflow_database():
    assert b"SECRET" in open(MLFLOW_DB, "rb").read()


def test_detached_daemon():
    in_subinterpreter(f"import os; assert os.system({{DAEMON!r}}) == 0")
'''
N_HOSTILE = HOSTILE.count("\ndef test_")


@pytest.fixture
def host():
    """A victim file, a fake MLflow database, a listening AF_UNIX socket and a signal trap, on the host."""
    outside = tempfile.mkdtemp(prefix="qf13-", dir="/tmp")  # short: AF_UNIX paths stop at 108 bytes
    victim = os.path.join(outside, "victim.txt")
    with open(victim, "w") as f:
        f.write("precious")
    mlflow_db = os.path.join(outside, "mlflow.db")
    with sqlite3.connect(mlflow_db) as con:
        con.execute("CREATE TABLE secrets (v)")
        con.execute("INSERT INTO secrets VALUES ('SECRET')")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(outside, "host.sock"))
    listener.listen(8)
    listener.setblocking(False)
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    signals = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: signals.append(a))
    yield SimpleNamespace(outside=outside, victim=victim, mlflow_db=mlflow_db, listener=listener, signals=signals, tcp=tcp,
                          sock=os.path.join(outside, "host.sock"), marker=f"qeforge-daemon-{uuid.uuid4().hex}")
    signal.signal(signal.SIGUSR1, previous)
    listener.close()
    tcp.close()
    shutil.rmtree(outside, ignore_errors=True)


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@needs_bwrap
@pytest.mark.parametrize("audit_hook", [True, False], ids=["with-audit-hook", "os-layer-alone"])
def test_every_host_attack_is_contained(host, audit_hook):
    suite = HOSTILE.format(victim=host.victim, outside=host.outside, sock=host.sock, mlflow_db=host.mlflow_db,
                           host_pid=os.getpid(), marker=host.marker, tcp_port=host.tcp.getsockname()[1])
    result = run_tests(suite, FOCAL, limits=SandboxLimits(timeout_s=20, audit_hook=audit_hook))
    survivors = _processes_with(host.marker)
    for pid in survivors:  # only processes this test's suite started carry the marker
        os.kill(pid, signal.SIGKILL)

    assert result.isolation == "bubblewrap" and result.status == "ok", result.log_tail
    # Every attack failed inside but the daemon, which starts there and must not outlive the run.
    assert (result.n_tests, result.failed) == (N_HOSTILE, N_HOSTILE - 1), result.log_tail
    assert "FAILED test_generated.py::test_detached_daemon" not in result.log_tail
    with open(host.victim) as f:
        assert f.read() == "precious"
    assert sorted(os.listdir(host.outside)) == ["host.sock", "mlflow.db", "victim.txt"]  # nothing created outside
    assert host.signals == []
    for listener in (host.listener, host.tcp):
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert survivors == []
    assert not result.escaped


FORGED_RECORDS = r'''
import json, os

def test_forge_every_record_then_exit():
    old = [{"original": {"n_tests": 9, "passed": 9, "failed": 0, "line_coverage": 1.0, "branch_coverage": 1.0}}]
    old += [{"mutant": i, "killed": True} for i in range(9)]
    new = [{"final": {"n_tests": 9, "passed": 9, "failed": 0, "timed_out": False, "collection_error": False,
                      "exit_code": 0, "arcs": [[a, b] for a in range(-1, 30) for b in range(-1, 30)]}}]
    for fd in range(3, 64):
        for record in old + new:
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            except OSError:
                pass
    os._exit(0)
'''

PATCHED_COVERAGE = r'''
import sys

def test_patch_the_harness_coverage():
    for module in list(sys.modules.values()):
        if hasattr(module, "_coverage") or getattr(module, "__name__", "") == "__main__":
            module._coverage = lambda *a, **k: (1.0, 1.0)
'''


def _suite(body: str) -> str:
    return f"```python\n{body}\n```"


def test_forged_records_and_an_early_exit_score_nothing():
    row = score_test_generation(_suite(FORGED_RECORDS), META)
    assert row["sandbox_status"] == "crash"
    assert (row["pass_rate"], row["line_coverage"], row["edge_coverage"], row["mutation_score"]) == (0.0, 0.0, 0.0, 0.0)
    assert row["rubric_score"] == pytest.approx(1.5)  # the syntax points only


def test_patching_the_harness_coverage_function_does_not_pay():
    row = score_test_generation(_suite(PATCHED_COVERAGE), META, n_mutants=0)
    assert (row["sandbox_status"], row["pass_rate"]) == ("ok", 1.0)
    assert (row["line_coverage"], row["edge_coverage"]) == (0.0, 0.0)  # the suite never called clamp


# Detectors: pass on the original, fail on anything else. Neither calls clamp, so no mutant is
# killed by testing; any kill would be detection.
DETECT_BY_STATE_AND_MTIME = r'''
import builtins, os

def test_detect_a_rewritten_focal_file():
    source = open("focal.py").read()
    assert builtins.__dict__.setdefault("_first_focal_source", source) == source
    assert os.stat("focal.py").st_mtime_ns <= os.stat("test_generated.py").st_mtime_ns
'''

DETECT_BY_TEXT = r'''
import ast

KNOWN = {focal!r}

def test_detect_anything_but_the_original_text():
    assert ast.unparse(ast.parse(open("focal.py").read())) == ast.unparse(ast.parse(KNOWN))
'''


def test_mutants_look_like_the_original_to_a_detector():
    row = score_test_generation(_suite(DETECT_BY_STATE_AND_MTIME), META)
    assert (row["sandbox_status"], row["pass_rate"], row["mutation_score"]) == ("ok", 1.0, 0.0)


def test_detecting_the_original_text_earns_no_mutation_credit():
    result = run_tests(DETECT_BY_TEXT.format(focal=FOCAL), FOCAL, mutants=make_mutants(FOCAL, 3))
    assert (result.status, result.passed, result.n_tests) == ("ok", 1, 1)
    assert result.control_passed is False and result.mutants_killed == 0
