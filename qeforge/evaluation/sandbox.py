"""Run untrusted, model-generated pytest suites against a focal module in a child process.

Layers, outermost first:

- a fresh temp dir as cwd, HOME and TMPDIR, deleted afterwards, and a scrubbed environment;
- `unshare -rn` where it works: a user + network namespace whose only interface is a down loopback;
- resource limits the child sets on itself before importing anything of the test's (address
  space, file size, core dumps, CPU time as an orphan backstop);
- an audit hook (`sys.addaudithook`) installed before pytest collects the tests: it blocks sockets,
  process creation, ctypes/cffi and writes outside the temp dir, and reports what it blocked;
- a wall-clock deadline after which the parent kills the child's whole process group;
- a canary file outside the sandbox that the parent checks afterwards: `escaped` means it changed.

An audit hook shares the interpreter with the code it polices, so a determined attacker can get
around it. It stops the accidental and the naive; the namespace, limits and canary are the backstop.

One child run (this file run as a script) measures everything for one (tests, focal) pair: test
outcomes and line/branch coverage against the original focal code, then the same suite against
each mutant. The child reports on an inherited, unlinked temp file as JSON lines, written as it
goes, so a child that dies still leaves what it had measured.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TEST_FILE = "test_generated.py"
STARTUP_GRACE_S = 5.0  # interpreter, pytest and coverage imports on a busy machine
LOG_TAIL_CHARS = 2000
MAX_BLOCKED = 50
FILE_SIZE_MB = 64


@dataclass(frozen=True)
class SandboxLimits:
    """`timeout_s` bounds each pytest run (the original and every mutant); the child process as a
    whole gets (1 + mutants) x timeout_s plus a start-up grace before its process group is killed."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    use_netns: bool | None = None  # None = use `unshare -rn` when it works here


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "ok" | "timeout" | "crash" | "collection_error" | "no_tests"
    n_tests: int
    passed: int
    failed: int  # failures + errors
    line_coverage: float  # 0..1 of the focal module's executable lines, from the original-focal run
    branch_coverage: float  # 0..1 of the focal module's branch arcs (1.0 if it ran and has none)
    missing_lines: tuple[int, ...]  # the focal module's statements the original run never executed
    mutants: int
    mutants_killed: int  # mutants left unrun (suite failing on the original, deadline) count as surviving
    blocked: tuple[str, ...]  # what the guard refused, e.g. "socket.connect ('1.1.1.1', 80)"
    escaped: bool
    duration_s: float
    netns: bool
    log_tail: str  # the end of the original run's pytest output, for debugging


@functools.cache
def netns_available() -> bool:
    """Whether `unshare -rn` (unprivileged user + network namespaces) works on this machine."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_tests(
    test_source: str,
    focal_source: str,
    module: str = "focal",
    *,
    mutants: Sequence[str] = (),
    limits: SandboxLimits = SandboxLimits(),
) -> SandboxResult:
    """Run `test_source` (saved as test_generated.py) against `focal_source` (saved as <module>.py)."""
    netns = netns_available() if limits.use_netns is None else limits.use_netns
    started = time.monotonic()
    root = os.path.realpath(tempfile.mkdtemp(prefix="qeforge-sandbox-"))
    # The canary lives outside the sandbox and nothing about it reaches the child.
    canary_dir = tempfile.mkdtemp(prefix="qeforge-canary-")
    canary, token = os.path.join(canary_dir, "canary"), secrets.token_hex(16)
    _write(canary, token)
    try:
        _write(os.path.join(root, f"{module}.py"), focal_source)
        _write(os.path.join(root, TEST_FILE), test_source)
        _write(os.path.join(root, "pytest.ini"), "[pytest]\n")  # pins rootdir: no ini above the sandbox applies
        records, log_tail, timed_out = _run_child(root, module, list(mutants), limits, netns)
    finally:
        escaped = not _canary_intact(canary, token)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(canary_dir, ignore_errors=True)
    return _summarise(records, log_tail, timed_out, len(mutants), escaped, netns, time.monotonic() - started)


def run_many(jobs: Sequence[dict], processes: int | None = None, limits: SandboxLimits = SandboxLimits()) -> list[SandboxResult]:
    """`run_tests(**job)` for every job, in job order; a job's own `limits` win over `limits`.
    Threads are enough: each job's work happens in its own child process."""
    with ThreadPoolExecutor(max_workers=processes or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run_tests(**{"limits": limits, **job}), jobs))


# --- parent side -------------------------------------------------------------------------


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _canary_intact(path: str, token: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == token
    except OSError:
        return False


def _run_child(root: str, module: str, mutants: list[str], limits: SandboxLimits, netns: bool) -> tuple[str, str, bool]:
    """Run the child to completion or deadline; (its records, its log tail, whether it was killed)."""
    deadline = STARTUP_GRACE_S + limits.timeout_s * (1 + len(mutants))
    command = [sys.executable, "-B", "-s", os.path.abspath(__file__)]
    if netns:
        command = ["unshare", "-rn", *command]
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": root,
        "HOME": root,
        "TMPDIR": root,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Suites are judged on pytest alone, not on whichever plugins this venv happens to have.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    # Unlinked files: the child cannot find them by path, and a dead child's output survives.
    with tempfile.TemporaryFile("a+b") as records, tempfile.TemporaryFile("w+b") as log:
        config = {
            "module": module,
            "mutants": mutants,
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
            "cpu_s": int(deadline) + 1,
            "records_fd": records.fileno(),
        }
        # No preexec_fn (unsafe with run_many's threads): the child limits itself on start-up.
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            pass_fds=(records.fileno(),), start_new_session=True,
        )
        try:
            proc.communicate(json.dumps(config).encode(), timeout=deadline)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            timed_out = True
        records.seek(0)
        log.seek(max(0, log.seek(0, os.SEEK_END) - 4 * LOG_TAIL_CHARS))
        tail = log.read().decode("utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        return records.read().decode("utf-8", errors="replace"), tail, timed_out


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads one: start_new_session), and the child itself
    in case it left the group; called before reaping, so the ids cannot have been reused."""
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except ProcessLookupError:
            pass


def _summarise(records: str, log_tail: str, timed_out: bool, n_mutants: int, escaped: bool, netns: bool, duration: float) -> SandboxResult:
    blocked: list[str] = []
    original: dict | None = None
    progress: dict = {}
    killed = 0
    for line in records.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # test code can write to the inherited fd too; keep only what parses
        if not isinstance(record, dict):
            continue
        if "blocked" in record and str(record["blocked"]) not in blocked and len(blocked) < MAX_BLOCKED:
            blocked.append(str(record["blocked"]))
        elif isinstance(record.get("original"), dict):
            original = record["original"]
        elif isinstance(record.get("progress"), dict):
            progress = record["progress"]
        elif "mutant" in record:
            killed += bool(record.get("killed"))
    if original is None:
        status = "timeout" if timed_out else "crash"
        original = progress  # the counts so far; no coverage without a finished run
    elif original.get("timed_out"):
        status = "timeout"
    elif original.get("collection_error"):
        status = "collection_error"
    elif not original.get("n_tests"):
        status = "no_tests"
    else:
        status = "ok"  # even if the deadline cut the mutant runs short
    return SandboxResult(
        status=status,
        n_tests=int(original.get("n_tests", 0)),
        passed=int(original.get("passed", 0)),
        failed=int(original.get("failed", 0)),
        line_coverage=float(original.get("line_coverage", 0.0)),
        branch_coverage=float(original.get("branch_coverage", 0.0)),
        missing_lines=tuple(int(n) for n in original.get("missing_lines", ())),
        mutants=n_mutants,
        mutants_killed=killed,
        blocked=tuple(blocked),
        escaped=escaped,
        duration_s=duration,
        netns=netns,
        log_tail=log_tail,
    )


# --- child side --------------------------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Refused whatever their arguments: networking, process creation, native code, and ways to reach
# the guard's own state or lift the limits.
_BLOCKED_EVENTS = frozenset({
    "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.killpg", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess"})

# Events whose path arguments must lie inside the sandbox: (path index, dir_fd index or None).
_PATH_ARGS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "shutil.rmtree": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.link": ((0, 2), (1, 3)),  # the source too: a hard link would make an outside file writable
    "os.symlink": ((1, 2),),  # where a link points is harmless: writes through it are resolved
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "sqlite3.connect": ((0, None),),  # sqlite writes from C, past the `open` event
}
# These act on the directory entry, not on what a symlink there points to.
_ENTRY_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename"})


class _OutOfTime(BaseException):
    """Raised by SIGALRM in the running test: a BaseException, so `except Exception` can't swallow it."""


class _Outcomes:
    """pytest plugin: per-test outcomes, collection errors, and a stop once the time budget is spent.
    With `emit`, it also reports running counts, which are all the parent gets if the child dies."""

    def __init__(self, emit=None) -> None:
        self.emit = emit
        self.session = None
        self.n_tests = 0
        self.passed: set[str] = set()
        self.failed: set[str] = set()
        self.collection_error = False
        self.out_of_time = False
        self.exit_code = 0
        self.duration = 0.0

    def pytest_sessionstart(self, session) -> None:
        self.session = session

    def pytest_collectreport(self, report) -> None:
        self.collection_error |= report.failed

    def pytest_collection_finish(self, session) -> None:
        self.n_tests = len(session.items)
        self.progress()

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:  # a failing setup or teardown is an error of that test
            self.failed.add(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed.add(report.nodeid)
        if self.out_of_time:
            self.session.shouldstop = "sandbox time budget spent"
        self.progress()

    def counts(self) -> dict:
        return {"n_tests": self.n_tests, "passed": len(self.passed - self.failed), "failed": len(self.failed)}

    def progress(self) -> None:
        if self.emit:
            self.emit(progress=self.counts())


def _child_main() -> None:
    config = json.loads(sys.stdin.buffer.read())
    _limit_resources(config["memory_mb"], config["cpu_s"])
    root, module = os.getcwd(), config["module"]
    sys.path[0] = root  # not this script's folder, whose modules could shadow the focal one
    records_fd = config["records_fd"]

    def emit(**record) -> None:
        os.write(records_fd, (json.dumps(record) + "\n").encode())

    # Trusted imports before the guard: nothing of theirs gets blocked, and they run at full speed.
    import coverage
    import pytest

    devnull = os.open(os.devnull, os.O_WRONLY)
    _install_guard(root, emit)

    focal_path = os.path.join(root, f"{module}.py")
    cov = coverage.Coverage(data_file=None, branch=True, include=[focal_path])
    cov.start()
    try:
        run = _pytest_run(pytest, [], config["timeout_s"], emit)
    finally:
        cov.stop()
    line_cov, branch_cov, missing = _coverage(cov, focal_path, root)
    counts = run.counts()
    emit(original={
        **counts, "timed_out": run.out_of_time, "collection_error": run.collection_error,
        "line_coverage": line_cov, "branch_coverage": branch_cov, "missing_lines": missing,
    })

    # Mutants only make sense against a suite that passes on the original: else all are "killed".
    if config["mutants"] and run.n_tests and counts["passed"] == run.n_tests:
        budget = min(config["timeout_s"], 1.0 + 3 * run.duration)  # 3x slower is as good as hung
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(devnull, 1)  # keep the original run's report at the end of the log
        os.dup2(devnull, 2)
        for i, source in enumerate(config["mutants"]):
            with open(focal_path, "w", encoding="utf-8") as f:
                f.write(source)
            for name in (module, TEST_FILE[:-3]):
                sys.modules.pop(name, None)
            mutant = _pytest_run(pytest, ["-x"], budget)
            emit(mutant=i, killed=mutant.out_of_time or bool(mutant.failed) or mutant.exit_code != 0)
    sys.stdout.flush()
    os._exit(0)  # don't wait for threads or atexit handlers the tests may have left behind


def _limit_resources(memory_mb: int, cpu_s: int) -> None:
    """Soft = hard, so test code cannot raise them again. No RLIMIT_NPROC: it counts every process
    of the user machine-wide (and root ignores it); the guard refuses process creation instead."""
    mib = 1 << 20
    wanted = (
        (resource.RLIMIT_AS, memory_mb * mib),
        (resource.RLIMIT_FSIZE, FILE_SIZE_MB * mib),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, cpu_s),  # reaps a spinning child whose parent died
    )
    for limit, value in wanted:
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))


def _pytest_run(pytest, extra: list[str], budget_s: float, emit=None) -> _Outcomes:
    """One pytest session in this process, stopped by SIGALRM after `budget_s` seconds."""
    outcomes = _Outcomes(emit)

    def on_alarm(signum, frame):
        outcomes.out_of_time = True
        raise _OutOfTime(f"sandbox time budget of {budget_s:.1f}s spent")

    signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        args = [TEST_FILE, "-q", "-p", "no:cacheprovider", "--tb=short", *extra]
        outcomes.exit_code = int(pytest.main(args, plugins=[outcomes]))
    except _OutOfTime:  # fired outside any test, between pytest's own steps
        outcomes.exit_code = -1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    outcomes.duration = time.monotonic() - started
    return outcomes


def _coverage(cov, focal_path: str, root: str) -> tuple[float, float, list[int]]:
    """(line, branch) coverage of the focal module and its missing lines; (0, 0, []) if it never ran."""
    from coverage.exceptions import CoverageException

    report = os.path.join(root, ".coverage.json")
    try:
        cov.json_report(morfs=[focal_path], outfile=report)
    except CoverageException:  # no data: the focal module was never imported
        return 0.0, 0.0, []
    with open(report, encoding="utf-8") as f:
        files = list(json.load(f)["files"].values())
    if not files or not files[0]["summary"]["covered_lines"]:
        return 0.0, 0.0, []
    s = files[0]["summary"]
    lines = s["covered_lines"] / s["num_statements"]
    branches = s["covered_branches"] / s["num_branches"] if s["num_branches"] else 1.0
    return lines, branches, sorted(files[0]["missing_lines"])


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _install_guard(root: str, emit) -> None:
    """Install the audit hook that confines the test code; what it refuses goes to `emit`."""
    prefix = os.path.join(root, "")

    def outside(path: str) -> bool:
        return path != root and not path.startswith(prefix)

    def resolve(path, dir_fd, entry: bool) -> str:
        if isinstance(path, int):  # an fd: where it really points
            return os.readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        if entry:
            return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
        return os.path.realpath(path)

    def violation(event: str, args: tuple) -> str | None:
        """What to report if `event` must be refused, else None."""
        if event in _BLOCKED_EVENTS or event.startswith("ctypes."):
            return " ".join(repr(a) for a in args if not hasattr(a, "fileno"))[:120]
        if event == "import":
            return args[0] if args[0] in _BLOCKED_IMPORTS else None
        if event == "socket.__new__":  # local socket pairs (asyncio's self-pipe) are harmless
            return None if args[1] == socket.AF_UNIX else f"family={args[1]}"
        if event == "os.kill":
            return None if args[0] == os.getpid() else f"pid={args[0]}"
        if event == "open":
            path, mode, flags = args
            writes = (flags or 0) & _WRITE_FLAGS or (mode and any(c in mode for c in "wax+"))
            if not writes or isinstance(path, int):
                return None
            where = resolve(path, None, False)
            if where == os.devnull:
                return None
            # A device node made inside the sandbox (os.mknod has no audit event) is still a device.
            return where if outside(where) or _is_device(where) else None
        for index, fd_index in _PATH_ARGS.get(event, ()):
            path = args[index]
            if event == "sqlite3.connect":
                path = os.fsdecode(path).removeprefix("file:").split("?")[0]
            where = resolve(path, None if fd_index is None else args[fd_index], event in _ENTRY_EVENTS)
            if outside(where):
                return where
        return None

    def hook(event: str, args: tuple) -> None:
        reason = violation(event, args)
        if reason is not None:
            entry = f"{event} {reason}".rstrip()
            emit(blocked=entry)
            raise PermissionError(f"blocked by the qeforge sandbox: {entry}")

    # subprocess already holds _posixsubprocess.fork_exec, which forks with no audit event.
    # Drop both references, so getting it back means an `import` the hook refuses.
    sys.modules.pop("_posixsubprocess", None)
    if "subprocess" in sys.modules:
        sys.modules["subprocess"]._fork_exec = None
    sys.addaudithook(hook)


if __name__ == "__main__":
    _child_main()
