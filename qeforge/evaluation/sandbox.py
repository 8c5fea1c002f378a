"""Run untrusted, model-generated pytest suites against a focal module, each run in its own sandbox.

Isolation, when bubblewrap (`bwrap`) works here (`isolation == "bubblewrap"`):

- its own user (uid 65534, no capabilities, no further user namespaces), pid, network (a down
  loopback only), ipc, uts and mount namespaces;
- a root file system that holds only /usr, the interpreter and its site-packages (read-only), this
  harness file (`sandbox_harness.py`, read-only), fresh /proc and /dev, and a size-capped tmpfs at /sandbox: the only
  writable place, holding the focal module, the suite and pytest.ini as read-only files. No other
  host file exists inside (no /etc, /home, /root, /tmp, the repository or the MLflow database);
- resource limits the harness sets on itself before importing anything of the suite's;
- when the harness exits, or the parent kills bwrap at the deadline, the pid namespace's init dies
  and the kernel kills every process left in it: no daemon outlives the run.

Without bubblewrap (`isolation == "weak"`) a run gets a temp dir, `unshare -rn` where that works and
the in-process audit hook below. That hook shares the interpreter with the code it polices, so a
hostile suite can switch it off: the evaluation's report, metadata and model card then say "weak
isolation". Under bubblewrap the hook stays as a second layer that names what it refused; the tests
switch it off (`audit_hook=False`) to show that nothing depends on it.

Scores come from separate runs, each in a fresh sandbox: the suite against the original focal
module (outcomes and the executed arcs of the focal file), against a control (the same module
rewritten without changing behaviour), and against each mutant. Every variant sits at the same path
with the same name, formatted the same way (`ast.unparse`). The parent computes coverage itself,
from the focal source and the arcs a run reports. See the README's "What a hostile suite can and
cannot fake" for what this protects.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from qeforge.evaluation import sandbox_harness
from qeforge.evaluation.pyparse import parse
from qeforge.evaluation.sandbox_harness import TEST_FILE

STARTUP_GRACE_S = 5.0  # interpreter, pytest and coverage imports on a busy machine
LOG_TAIL_CHARS = 2000
MAX_BLOCKED = 50
MAX_ARCS = 100_000  # a focal module has far fewer; more is a forged record
SANDBOX_ROOT = "/sandbox"  # the tmpfs, cwd, HOME and TMPDIR inside bubblewrap
HARNESS = "/harness/sandbox_harness.py"  # where the harness file is bound, read-only, inside bubblewrap
NOBODY = 65534
WEAK_ISOLATION = ("weak isolation: bubblewrap is not available, so generated tests ran under an in-process "
                  "audit hook that a hostile suite can switch off")


@dataclass(frozen=True)
class SandboxLimits:
    """`timeout_s` bounds each pytest run (the original, the control and every mutant); each run's
    process gets its budget plus a start-up grace before the parent kills it."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    use_netns: bool | None = None  # weak mode only: None = use `unshare -rn` when it works here
    tmpfs_mb: int = 64  # the only writable place under bubblewrap
    use_bwrap: bool | None = None  # None = bubblewrap when it works here
    audit_hook: bool = True  # False only under bubblewrap, to show the OS layer holds on its own


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "ok" | "timeout" | "crash" | "collection_error" | "no_tests"
    n_tests: int
    passed: int
    failed: int  # failures + errors
    line_coverage: float  # 0..1 of the focal module's executable lines, from the original-focal run
    branch_coverage: float  # 0..1 of the focal module's branch arcs (1.0 if it ran and has none)
    mutants: int
    mutants_killed: int  # unrun mutants (suite failing on the original, control failed) count as surviving
    blocked: tuple[str, ...]  # what the audit hook refused, e.g. "socket.connect ('1.1.1.1', 80)"
    escaped: bool
    duration_s: float
    netns: bool
    log_tail: str  # the end of the original run's pytest output, for debugging
    isolation: str = "weak"  # "bubblewrap" | "weak"
    control_passed: bool | None = None  # None: not run (no mutants, or the suite fails on the original)
    # The focal code's statements the original run never executed, numbered as in the code that ran:
    # the focal source itself when no mutants are asked for (it is normalized only to hide mutants).
    missing_lines: tuple[int, ...] = ()


@functools.cache
def netns_available() -> bool:
    """Whether `unshare -rn` (unprivileged user + network namespaces) works on this machine."""
    return _works(["unshare", "-rn", "true"])


@functools.cache
def bwrap_available() -> bool:
    """Whether bubblewrap can build this module's sandbox here (installed, user namespaces allowed)."""
    return shutil.which("bwrap") is not None and _works([*_bwrap_prefix(), "true"])


def _works(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def isolation_summary(isolations) -> str | None:
    """What reports say about a set of runs' `isolation` values: None when nothing ran in the
    sandbox, the plain-words warning when any run had weak isolation."""
    seen = {i for i in isolations if isinstance(i, str)}
    if not seen:
        return None
    return WEAK_ISOLATION if seen != {"bubblewrap"} else "bubblewrap: own user, pid, network and mount namespaces"


def run_tests(
    test_source: str,
    focal_source: str,
    module: str = "focal",
    *,
    mutants: Sequence[str] = (),
    limits: SandboxLimits = SandboxLimits(),
    scope: str | None = None,
) -> SandboxResult:
    """Run `test_source` (saved as test_generated.py) against `focal_source` (saved as <module>.py),
    then against a behaviour-preserving control and each mutant, every run in a fresh sandbox.
    Coverage is of the function or method `scope` (a qualified name) when the focal code has it."""
    bwrap = bwrap_available() if limits.use_bwrap is None else limits.use_bwrap
    if not bwrap and not limits.audit_hook:
        raise ValueError("audit_hook=False needs bubblewrap: without it the hook is the only guard")
    netns = bwrap or (netns_available() if limits.use_netns is None else limits.use_netns)
    started = time.monotonic()
    # The canary lives outside every sandbox and nothing about it reaches the runs.
    canary_dir = tempfile.mkdtemp(prefix="qeforge-canary-")
    canary, token = os.path.join(canary_dir, "canary"), secrets.token_hex(16)
    _write(canary, token)
    run = functools.partial(_run, test_source, module, limits=limits, bwrap=bwrap, netns=netns)
    try:
        # Normalized (ast.unparse) only when mutants must look like the original; otherwise line numbers stay the caller's.
        original_source = _normalise(focal_source) if mutants else focal_source
        original = run(original_source, limits.timeout_s, measure=True)
        runs, control_passed, killed = [original], None, 0
        # Mutants only make sense against a suite that passes on the original: else all are "killed".
        if mutants and original.passed_all:
            budget = min(limits.timeout_s, 1.0 + 3 * original.duration)  # 3x slower is as good as hung
            control = run(control_variant(original_source), budget)
            runs.append(control)
            control_passed = control.passed_all
            # A suite that fails a rewrite with the same behaviour is checking the code, not testing it.
            if control_passed:
                for source in mutants:
                    runs.append(run(_normalise(source), budget))
                    killed += not runs[-1].passed_all
    finally:
        escaped = not _canary_intact(canary, token)
        shutil.rmtree(canary_dir, ignore_errors=True)
    final = original.final
    line_cov, branch_cov, missing = _coverage(original_source, final["arcs"], scope) if final else (0.0, 0.0, [])
    blocked = list(dict.fromkeys(b for r in runs for b in r.blocked))[:MAX_BLOCKED]
    counts = final or original.progress
    return SandboxResult(
        status=original.status, n_tests=counts.get("n_tests", 0), passed=counts.get("passed", 0),
        failed=counts.get("failed", 0), line_coverage=line_cov, branch_coverage=branch_cov, mutants=len(mutants),
        mutants_killed=killed, blocked=tuple(blocked), escaped=escaped, duration_s=time.monotonic() - started,
        netns=netns, log_tail=original.log_tail, isolation="bubblewrap" if bwrap else "weak", control_passed=control_passed,
        missing_lines=tuple(missing),
    )


def run_many(jobs: Sequence[dict], processes: int | None = None, limits: SandboxLimits = SandboxLimits()) -> list[SandboxResult]:
    """`run_tests(**job)` for every job, in job order; a job's own `limits` win over `limits`.
    Threads are enough: each job's work happens in its own child processes."""
    with ThreadPoolExecutor(max_workers=processes or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run_tests(**{"limits": limits, **job}), jobs))


# --- the focal variants ------------------------------------------------------------------

# `a < b` and `b > a` agree for numbers and for anything whose comparisons are consistent.
_MIRROR = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}


def _normalise(source: str) -> str:
    """The source as `ast.unparse` writes it, as mutants are written: formatting tells nothing apart."""
    try:
        return ast.unparse(parse(source))
    except (SyntaxError, ValueError, RecursionError):
        return source


def control_variant(source: str) -> str:
    """The same behaviour in different code: simple comparisons mirrored (`x < lo` -> `lo > x`;
    operands that are names or constants, so evaluation order cannot matter) and a `pass` at the top
    of the module and of every function body. A suite that fails it detects the code (a hash, its
    text, its size, its bytecode) instead of testing behaviour, and gets no mutation credit."""
    try:
        tree = parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return source
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _MIRROR:
            left, right = node.left, node.comparators[0]
            if all(isinstance(x, (ast.Name, ast.Constant)) for x in (left, right)):
                node.left, node.comparators, node.ops = right, [left], [_MIRROR[type(node.ops[0])]()]
        elif isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
            node.body.insert(int(docstring), ast.Pass())
    return ast.unparse(ast.fix_missing_locations(tree))


# --- parent side -------------------------------------------------------------------------


@dataclass
class _Run:
    """One sandboxed pytest run, as the parent read it back."""

    final: dict | None  # the validated end-of-run record; None if the run died or was killed first
    progress: dict  # the last running counts
    blocked: list[str]
    log_tail: str
    timed_out: bool
    duration: float
    status: str = field(init=False)

    def __post_init__(self):
        f = self.final
        if f is None:
            self.status = "timeout" if self.timed_out else "crash"
        elif f["timed_out"]:
            self.status = "timeout"
        elif f["collection_error"]:
            self.status = "collection_error"
        elif not f["n_tests"]:
            self.status = "no_tests"
        else:
            self.status = "ok"

    @property
    def passed_all(self) -> bool:
        f = self.final
        return self.status == "ok" and not f["failed"] and f["passed"] == f["n_tests"] and f["exit_code"] == 0


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _canary_intact(path: str, token: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == token
    except OSError:
        return False


def _bwrap_prefix() -> list[str]:
    """bwrap and its namespaces, the read-only system and interpreter, /proc and /dev."""
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):  # usrmerge links, or real dirs elsewhere
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # The interpreter and its packages (a venv and the Python it was made from), unless under /usr.
    for prefix in sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}):
        if not prefix.startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
    if not sys.prefix.startswith("/usr/"):
        args += ["--ro-bind", sys.prefix, sys.prefix]  # the venv's own path, if it is a link
    return args + ["--proc", "/proc", "--dev", "/dev"]


def _bwrap_command(file_fds: dict[str, int], tmpfs_mb: int, env: dict[str, str]) -> list[str]:
    """The whole bwrap command line for one run; `file_fds` become read-only files in /sandbox."""
    command = [*_bwrap_prefix(), "--size", str(tmpfs_mb << 20), "--tmpfs", SANDBOX_ROOT,
               "--ro-bind", os.path.abspath(sandbox_harness.__file__), HARNESS]
    for name, fd in file_fds.items():
        command += ["--perms", "0444", "--ro-bind-data", str(fd), f"{SANDBOX_ROOT}/{name}"]
    # bwrap's own root and /dev are tmpfs without a size cap: read-only, so /sandbox is the only writable place.
    command += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SANDBOX_ROOT, "--clearenv"]
    for key, value in {"PATH": "/usr/bin:/bin", "HOME": SANDBOX_ROOT, "TMPDIR": SANDBOX_ROOT, **env}.items():
        command += ["--setenv", key, value]
    return [*command, "--", sys.executable, "-I", "-B", HARNESS]


def _data_file(text: str):
    f = tempfile.TemporaryFile("w+b")
    f.write(text.encode("utf-8"))
    f.seek(0)
    return f


def _run(test_source: str, module: str, focal_source: str, budget_s: float, *, limits: SandboxLimits,
         bwrap: bool, netns: bool, measure: bool = False) -> _Run:
    """One pytest run of the suite against one focal variant, to completion or deadline."""
    deadline = STARTUP_GRACE_S + budget_s
    # The harness ends with this status, after its `final` record: a suite that writes a record and
    # exits (os._exit(0)) first must also find this number in the harness's memory.
    exit_status = 64 + secrets.randbelow(60)
    files = {f"{module}.py": focal_source, TEST_FILE: test_source,
             "pytest.ini": "[pytest]\n"}  # pins rootdir: no ini above the sandbox applies
    started = time.monotonic()
    # Unlinked files: no run can find them by path, and a dead run's output survives.
    with tempfile.TemporaryFile("a+b") as records, tempfile.TemporaryFile("w+b") as log:
        config = {"module": module, "timeout_s": budget_s, "memory_mb": limits.memory_mb, "cpu_s": int(deadline) + 1,
                  "records_fd": records.fileno(), "measure": measure, "audit_hook": limits.audit_hook,
                  "stop_at_first_failure": not measure, "exit_status": exit_status}
        base_env = {"LANG": "C.UTF-8", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # judged on pytest alone, no plugins
        root = None
        data = [_data_file(text) for text in files.values()]
        try:
            if bwrap:
                command = _bwrap_command({name: f.fileno() for name, f in zip(files, data)}, limits.tmpfs_mb, base_env)
                env, cwd, fds = {"PATH": os.environ.get("PATH", os.defpath)}, "/", [f.fileno() for f in data]
            else:
                root = cwd = os.path.realpath(tempfile.mkdtemp(prefix="qeforge-sandbox-"))
                for name, text in files.items():
                    _write(os.path.join(root, name), text)
                command = [sys.executable, "-I", "-B", os.path.abspath(sandbox_harness.__file__)]
                command = ["unshare", "-rn", *command] if netns else command
                env, fds = {"PATH": os.environ.get("PATH", os.defpath), "HOME": root, "TMPDIR": root, **base_env}, []
            # No preexec_fn (unsafe with run_many's threads): the harness limits itself on start-up.
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=(records.fileno(), *fds), start_new_session=True)
            try:
                proc.communicate(json.dumps(config).encode(), timeout=deadline)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.communicate()
                timed_out = True
        finally:
            for f in data:
                f.close()
            if root:
                shutil.rmtree(root, ignore_errors=True)
        records.seek(0)
        log.seek(max(0, log.seek(0, os.SEEK_END) - 4 * LOG_TAIL_CHARS))
        tail = log.read().decode("utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        text = records.read().decode("utf-8", errors="replace")
        return _read_records(text, tail, timed_out, time.monotonic() - started, proc.returncode == exit_status)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (it leads one: start_new_session), and the run itself in case
    it left the group; called before reaping, so the ids cannot have been reused. Under bubblewrap,
    bwrap's death takes the pid namespace and everything in it along (--die-with-parent)."""
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except ProcessLookupError:
            pass


def _count(value, at_most: int | None = None) -> int:
    if type(value) is not int or value < 0 or (at_most is not None and value > at_most):
        raise ValueError(f"bad count {value!r}")
    return value


def _validated(final) -> dict:
    """The end-of-run record with checked types and consistent counts, or ValueError."""
    n = _count(final["n_tests"])
    out = {"n_tests": n, "passed": _count(final["passed"], n), "failed": _count(final["failed"], n)}
    if out["passed"] + out["failed"] > n:
        raise ValueError("more outcomes than tests")
    for key in ("timed_out", "collection_error"):
        if type(final[key]) is not bool:
            raise ValueError(key)
        out[key] = final[key]
    if type(final["exit_code"]) is not int:
        raise ValueError("exit_code")
    out["exit_code"] = final["exit_code"]
    arcs = final["arcs"]
    if not isinstance(arcs, list) or len(arcs) > MAX_ARCS:
        raise ValueError("arcs")
    out["arcs"] = [(a, b) for a, b in arcs if type(a) is int and type(b) is int]
    return out


def _read_records(text: str, log_tail: str, timed_out: bool, duration: float, harness_exited: bool) -> _Run:
    blocked: list[str] = []
    finals: list = []
    progress: dict = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if "blocked" in record and len(blocked) < MAX_BLOCKED:
            blocked.append(str(record["blocked"])[:200])
        elif "final" in record:
            finals.append(record["final"])
        elif isinstance(record.get("progress"), dict):
            try:
                progress = {k: _count(record["progress"][k]) for k in ("n_tests", "passed", "failed")}
            except (KeyError, ValueError):
                pass
    final = None
    # The harness writes exactly one and then exits with the agreed status; anything else is not its record.
    if len(finals) == 1 and harness_exited:
        try:
            final = _validated(finals[0])
        except (KeyError, TypeError, ValueError):
            final = None
    return _Run(final, progress, list(dict.fromkeys(blocked)), log_tail, timed_out, duration)


def _coverage(source: str, arcs: list[tuple[int, int]], scope: str | None = None) -> tuple[float, float, list[int]]:
    """(line, branch) coverage of the focal source, or of its function `scope`, and the source's
    never-executed statements, computed here from the arcs a run reported: a run can only name arcs,
    and arcs the source does not have count for nothing. (0, 0, []) if none ran."""
    import coverage

    with tempfile.TemporaryDirectory(prefix="qeforge-coverage-") as d:
        path = os.path.join(d, "focal.py")
        _write(path, source)
        cov = coverage.Coverage(data_file=None, branch=True, include=[path])
        cov.get_data().add_arcs({path: set(arcs)})
        report = os.path.join(d, "coverage.json")
        try:
            cov.json_report(morfs=[path], outfile=report)
        except coverage.exceptions.CoverageException:  # e.g. the focal code does not parse
            return 0.0, 0.0, []
        with open(report, encoding="utf-8") as f:
            files = list(json.load(f)["files"].values())
    if not files or not files[0]["summary"]["covered_lines"]:
        return 0.0, 0.0, []
    s = files[0].get("functions", {}).get(scope, files[0])["summary"]
    if not s["num_statements"]:
        return 0.0, 0.0, sorted(files[0]["missing_lines"])
    lines = s["covered_lines"] / s["num_statements"]
    branches = s["covered_branches"] / s["num_branches"] if s["num_branches"] else 1.0
    return lines, branches, sorted(files[0]["missing_lines"])


