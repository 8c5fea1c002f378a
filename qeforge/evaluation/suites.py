"""How a suite meets its focal code: under which module name, and with what it takes for granted.

Suites are written for the harness they came with. ClassEval's method-level unittest classes run
appended to the module that defines the class, so they use `unittest`, `math` and the class without
importing any of them; agentic-qe's generated suites import the code by its project path
(`from src.calc.py import add`). The sandbox holds one flat focal module, so the suite gets:

- the focal code under the name it imports it by (`from roman import to_roman` -> `roman.py`), else
  `focal`;
- its imports of project paths (relative, or dotted under a package the sandbox does not have)
  pointed at that module, on the same lines;
- a first line for what it uses without importing: `unittest` and `pytest` imported, and every other
  free name looked up in the focal module's namespace (its globals, private ones and its imports
  included), as if the suite were appended to it. The suite's own definitions still win.

Nothing about the sandbox changes; a name neither the suite nor the focal module has stays a NameError.
"""

from __future__ import annotations

import ast
import builtins
import sys

from qeforge.evaluation.ground_truth import parses

# Modules a suite imports that are not the code under test.
TEST_LIBRARIES = {"pytest", "unittest", "hypothesis", "mock", "freezegun"}
# What a benchmark's test file imports for the suites it runs.
TEST_MODULES = ("unittest", "pytest")
_BUILTINS = set(dir(builtins))


def _outside(name: str) -> bool:
    """A top-level module name that is neither the standard library nor a test library."""
    return name not in sys.stdlib_module_names and name not in TEST_LIBRARIES


def _project_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """`from .a import b`, `from src.calc.py import add`: paths into a project the sandbox does not have."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and (n.level > 0 or (n.module and "." in n.module and _outside(n.module.split(".")[0])))]


def _local_module(tree: ast.Module) -> str | None:
    """The first plain module the suite imports that is not standard or a test library."""
    for node in tree.body:
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if "." not in name and _outside(name):
                return name
    return None


def _repoint(source: str, imports: list[ast.ImportFrom], module: str) -> str:
    """Each import rewritten as `from <module> import <names>` in place; later lines keep their numbers."""
    lines = source.splitlines(keepends=True)
    for node in sorted(imports, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        names = ", ".join(f"{a.name} as {a.asname}" if a.asname else a.name for a in node.names)
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        # ast offsets count UTF-8 bytes
        head = first.encode()[:node.col_offset].decode(errors="replace")
        tail = last.encode()[node.end_col_offset:].decode(errors="replace")
        lines[node.lineno - 1: node.end_lineno] = [f"{head}from {module} import {names}{tail}"] + ["\n"] * (node.end_lineno - node.lineno)
    return "".join(lines)


def free_names(tree: ast.Module) -> set[str]:
    """Names the suite reads but never binds anywhere (scopes merged: a safe over-approximation of bound)."""
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return {n for n in loaded - bound - _BUILTINS if not n.startswith("__")}


def _prelude(tree: ast.Module, module: str) -> str:
    free = free_names(tree)
    parts = [f"import {m}" for m in TEST_MODULES if m in free]
    if free - set(TEST_MODULES):
        parts.append(f"globals().update({{k: v for k, v in vars(__import__({module!r})).items() if not k.startswith('__')}})")
    return "; ".join(parts) + "  # added: the suite runs in the focal module's namespace\n" if parts else ""


def suite_module(tests: str, module: str | None = None) -> tuple[str, str]:
    """(module name to save the focal code as, the suite to run); `module` when the metadata names it."""
    tree = parses(tests)
    if tree is None:  # it will not collect whatever its name
        return module or "focal", tests
    project = _project_imports(tree)
    module = module or _local_module(tree) or "focal"
    suite = _repoint(tests, project, module) if project else tests
    return module, _prelude(parses(suite) or tree, module) + suite
