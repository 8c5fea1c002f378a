"""Coverage-analysis tasks with line coverage measured for real.

The focal function and a subset of its tests are executed in-process under
`sys.settrace`; that takes well under a millisecond per row, where spawning
coverage.py for ~1000 rows would take minutes. Line numbers are relative to
the function listing shown in the task (line 1 is the `def`). `def` lines are
left out: they run at import time, not under the tests.
"""

from __future__ import annotations

import ast
import random
import sys
from types import CodeType

from qeforge.demo.functions import FUNCTION_TEMPLATES, instantiate
from qeforge.demo.test_generation import Example, pytest_shim, render_suite, run_checks

FOCAL_FILENAME = "<focal>"


def executable_lines(source: str) -> set[int]:
    """Lines holding bytecode inside function bodies (what coverage.py calls statements)."""
    module = compile(source, FOCAL_FILENAME, "exec")
    def_lines = {n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    lines: set[int] = set()
    pending = [c for c in module.co_consts if isinstance(c, CodeType)]
    while pending:
        code = pending.pop()
        lines.update(line for _, _, line in code.co_lines() if line is not None)
        pending.extend(c for c in code.co_consts if isinstance(c, CodeType))
    return lines - def_lines


def traced_lines(source: str, test_source: str) -> set[int]:
    """Lines of `source` executed while running every `test_*` function in `test_source`."""
    namespace: dict = {}
    exec(compile(source, FOCAL_FILENAME, "exec"), namespace)  # noqa: S102 - generated focal code
    scope = dict(namespace, pytest=pytest_shim())
    # The suite imports from `focal`; the names are already in scope.
    body = "\n".join(line for line in test_source.splitlines() if not line.startswith(("import pytest", "from focal import")))
    exec(compile(body, "<tests>", "exec"), scope)  # noqa: S102
    hit: set[int] = set()

    def local(frame, event, arg):
        if event == "line":
            hit.add(frame.f_lineno)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == FOCAL_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for name, test in list(scope.items()):
            if name.startswith("test_") and callable(test):
                test()
    finally:
        sys.settrace(previous)
    return hit


def numbered(source: str) -> str:
    return "\n".join(f"{i:>3} | {line}" for i, line in enumerate(source.rstrip("\n").splitlines(), start=1))


PROMPTS = (
    "Which lines of `{name}` are not executed by the tests below? Line numbers refer to the listing.\n\n"
    "```\n{listing}\n```\n\nTests:\n```python\n{tests}```",
    "Coverage analysis: run the tests mentally against the function and list the uncovered lines.\n\n"
    "Function (numbered):\n```\n{listing}\n```\n\nTest module:\n```python\n{tests}```",
    "Find the coverage gaps. Report the line numbers of `{name}` that these pytest tests never reach.\n\n"
    "```\n{listing}\n```\n\n```python\n{tests}```",
)


def _report(uncovered: list[int], executable: list[int], lines: list[str], name: str) -> str:
    total = len(executable)
    pct = round(100 * (total - len(uncovered)) / total) if total else 100
    if not uncovered:
        return f"Uncovered lines: none\nLine coverage: {total}/{total} (100%)\nEvery executable line of `{name}` runs under these tests."
    detail = "\n".join(f"- line {n}: `{lines[n - 1].strip()}` is never reached" for n in uncovered)
    return (
        f"Uncovered lines: {', '.join(map(str, uncovered))}\n"
        f"Line coverage: {total - len(uncovered)}/{total} ({pct}%)\n{detail}"
    )


def make_example(spec_seed: int, style_seed: int) -> Example:
    spec, style = random.Random(spec_seed), random.Random(style_seed)
    focal = instantiate(spec.choice(FUNCTION_TEMPLATES), spec, style)
    checks = run_checks(focal)
    # A random subset of the known cases, so some branches stay unexercised;
    # about one task in eight keeps them all (full coverage is a valid answer).
    if spec.random() < 0.125:
        chosen = checks
    else:
        chosen = sorted(spec.sample(range(len(checks)), spec.randint(1, max(1, len(checks) - 2))))
        chosen = [checks[i] for i in chosen]
    tests = render_suite(focal, chosen)
    executable = sorted(executable_lines(focal.source))
    covered = sorted(traced_lines(focal.source, tests) & set(executable))
    uncovered = sorted(set(executable) - set(covered))
    lines = focal.source.splitlines()

    task = style.choice(PROMPTS).format(name=focal.name, listing=numbered(focal.source), tests=tests)
    success = _report(uncovered, executable, lines, focal.name)

    # Wrong answers a weak model gives: shifted numbering, listing covered lines, or claiming full coverage.
    mode = spec.choice(("shift", "covered", "none"))
    if mode == "none" and uncovered:
        wrong = []
    elif mode == "covered" or not uncovered:
        wrong = sorted(spec.sample(covered, min(len(covered), spec.randint(1, 3))))
    else:
        wrong = sorted({n + 1 for n in uncovered})
    failure = f"Uncovered lines: {', '.join(map(str, wrong)) or 'none'}"
    near = uncovered[:-1] if len(uncovered) > 1 else sorted(set(uncovered) | {covered[-1]})
    partial = f"Uncovered lines: {', '.join(map(str, near))}\n(partial analysis; loop bodies not checked)"
    return Example(
        task=task,
        metadata={"executable_lines": executable, "covered_lines": covered, "uncovered_lines": uncovered},
        outputs={
            "success": success,
            "partial": partial,
            "failure": failure,
            "skipped": "Skipped: could not determine the executable lines of the listing.",
        },
    )
