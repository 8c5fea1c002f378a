"""The harness of one sandboxed run, run as a script by qeforge.evaluation.sandbox (stdlib only: it is
the one qeforge file bound into the sandbox).

It reads its config on stdin, limits its own resources, imports pytest and coverage, optionally
installs the audit hook, runs the suite against the focal module in the cwd, and writes JSON lines
to an inherited, unlinked file: running counts, what the hook refused, and one `final` record.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import sys
import time

TEST_FILE = "test_generated.py"
FILE_SIZE_MB = 64

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
    """One run: the suite against the focal module in the cwd; one `final` record at the end."""
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

    if config["audit_hook"]:
        _install_guard(root, emit)
    focal_path = os.path.join(root, f"{module}.py")
    cov = coverage.Coverage(data_file=None, branch=True, include=[focal_path]) if config["measure"] else None
    if cov:
        cov.start()
    try:
        run = _pytest_run(pytest, ["-x"] if config["stop_at_first_failure"] else [], config["timeout_s"], emit)
    finally:
        if cov:
            cov.stop()
    arcs = sorted(cov.get_data().arcs(focal_path) or ()) if cov else []
    emit(final={**run.counts(), "timed_out": run.out_of_time, "collection_error": run.collection_error,
                "exit_code": run.exit_code, "arcs": arcs})
    sys.stdout.flush()
    os._exit(config["exit_status"])  # don't wait for threads or atexit handlers the tests may have left behind


def _limit_resources(memory_mb: int, cpu_s: int) -> None:
    """Soft = hard, so test code cannot raise them again. No RLIMIT_NPROC: it counts every process
    of the user machine-wide (and root ignores it). The audit hook refuses process creation; under
    bubblewrap the pid namespace ends every process with the run (see the README for fork bombs)."""
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
