"""Ground truth read from the trajectory itself, for rows whose metadata does not carry it.

Eval specs name these as `task.<name>` sources (see EXTRACTORS). Each takes the task text (the user
turn) and returns a value, or raises NoGroundTruth with a reason code, which the report counts as
`unscorable`:
- `focal_code`: the task's fenced Python blocks that are not tests (a function, a class, a module);
- `focal_function`: the one function or method of the focal code the task's prose names (`the
  \`withdraw\` method`, `BankAccount.withdraw`, `the add function`), as its qualified name: a
  method-level task (ClassEval) is covered over that method, not the whole class;
- `annotated_uncovered_lines`: the `!` lines of a coverage.py `annotate`-style listing in the task
  (`> ` executed, `! ` missed, `- ` excluded, two spaces: not a statement), numbered from 1;
- `traced_uncovered_lines`: the given test run against the focal code under coverage.py, in the sandbox.
"""

from __future__ import annotations

import ast
import re

from qeforge.evaluation.pyparse import parse

FENCE = re.compile(r"```[ \t]*([\w+#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_TAGS = {"", "python", "py", "python3"}
_NUMBERED = re.compile(r"^\s*(\d+)\s*\|\s?(.*)$")
_ANNOTATED = re.compile(r"^([>!\- ]) (.*)$")
# How prose names a function: `withdraw`, `BankAccount.withdraw()`, BankAccount.withdraw, method withdraw, add function.
_MENTION = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?:\(\))?`|\b([A-Za-z_]\w*\.[A-Za-z_]\w*)\b"
                      r"|\b(?:method|function)\s+([A-Za-z_]\w*)|\b([A-Za-z_]\w*)(?=\s+(?:method|function)\b)")


class NoGroundTruth(Exception):
    """This source has nothing for this example; `reason` is a short code the report counts."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every fenced block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def parses(code: str) -> ast.Module | None:
    try:
        return parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # NUL bytes, nesting past the parser's limit
        return None


def defines_tests(tree: ast.Module) -> bool:
    """test_ functions or unittest.TestCase classes: a suite, not code under test."""
    return any(
        (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_"))
        or (isinstance(n, ast.ClassDef) and any("TestCase" in ast.unparse(b) for b in n.bases))
        for n in ast.walk(tree)
    )


def _python_blocks(task: str, *, tests: bool) -> list[str]:
    out = []
    for tag, code in fenced_blocks(task):
        tree = parses(code) if tag in PYTHON_TAGS else None
        if tree is not None and tree.body and defines_tests(tree) == tests:
            out.append(code)
    return out


def focal_code(task: str) -> str:
    code = _python_blocks(task, tests=False)
    if code:
        return "\n\n".join(code)
    numbered = numbered_listing(task)
    if numbered:
        return "\n".join(numbered[i] for i in sorted(numbered)) + "\n"
    tags = sorted({tag for tag, _ in fenced_blocks(task) if tag not in PYTHON_TAGS})
    if tags:
        raise NoGroundTruth(f"unsupported_language_{tags[0]}")  # the sandbox runs Python only
    raise NoGroundTruth("no_python_code_block" if "```" in task else "no_code_block")


def _qualnames(tree: ast.AST, prefix: str = "") -> list[str]:
    """Qualified names of the functions and methods, as coverage.py reports them (`Class.method`)."""
    out = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(prefix + node.name)
        elif isinstance(node, ast.ClassDef):
            out += _qualnames(node, f"{prefix}{node.name}.")
    return out


def focal_function(task: str) -> str:
    tree = parses(focal_code(task))
    prose = FENCE.sub(" ", task)
    named = {name for groups in _MENTION.findall(prose) for name in groups if name}
    found = {q for q in _qualnames(tree) if q in named or q.rsplit(".", 1)[-1] in named} if tree else set()
    if len(found) != 1:  # none, or several: the suite is for the whole focal code
        raise NoGroundTruth("no_focal_function")
    return found.pop()


def given_tests(task: str) -> str:
    tests = _python_blocks(task, tests=True)
    if not tests:
        raise NoGroundTruth("no_python_test_block")
    return "\n\n".join(tests)


def numbered_listing(task: str) -> dict[int, str]:
    """`  12 | code` listings: {12: "code"}; {} when the task has none."""
    for _, code in fenced_blocks(task):
        rows = [_NUMBERED.match(line) for line in code.splitlines() if line.strip()]
        if rows and all(rows):
            return {int(m.group(1)): m.group(2) for m in rows}
    return {}


def annotated_listing(text: str) -> list[tuple[str, str]] | None:
    """[(marker, code)] of the first coverage.py-annotate-style block (or the whole text), or None."""
    for _, code in fenced_blocks(text) or [("", text)]:
        rows = []
        for line in code.rstrip("\n").splitlines():
            match = _ANNOTATED.match(line)
            if line.strip() and not match:
                break
            rows.append((match.group(1), match.group(2)) if match else (" ", ""))
        else:
            if any(marker in "!>" for marker, _ in rows if marker != " "):
                return rows
    return None


def listing_lines(task: str) -> dict[int, str]:
    """Line number -> code of the focal listing, whichever form the task gives it in."""
    annotated = annotated_listing(task)
    if annotated:
        return {i: code for i, (_, code) in enumerate(annotated, start=1)}
    numbered = numbered_listing(task)
    if numbered:
        return numbered
    try:
        return dict(enumerate(focal_code(task).splitlines(), start=1))
    except NoGroundTruth:
        return {}


def annotated_uncovered_lines(task: str) -> list[int]:
    annotated = annotated_listing(task)
    if annotated is None:
        raise NoGroundTruth("no_annotated_listing")
    return [i for i, (marker, _) in enumerate(annotated, start=1) if marker == "!"]


def traced_uncovered_lines(task: str) -> list[int]:
    from qeforge.evaluation.sandbox import SandboxLimits, run_tests
    from qeforge.evaluation.suites import suite_module

    focal, tests = focal_code(task), given_tests(task)
    module, suite = suite_module(tests)
    result = run_tests(suite, focal, module, limits=SandboxLimits(timeout_s=10))
    if result.status != "ok":
        raise NoGroundTruth(f"given_test_{result.status}")  # a crashed test traces nothing worth trusting
    return list(result.missing_lines)


EXTRACTORS = {
    "focal_code": focal_code,
    "focal_function": focal_function,
    "annotated_uncovered_lines": annotated_uncovered_lines,
    "traced_uncovered_lines": traced_uncovered_lines,
}
