"""Score a model's test suite (pytest or unittest) for focal code: does it parse, pass, cover, and catch bugs?

The suite runs in the sandbox (qeforge.evaluation.sandbox) against the focal code and against a
few cheap AST mutants of it. The rubric follows the product plan: coverage 40, edge cases 30,
syntax 15, logic 15 points, reported on a 0-10 scale.
"""

from __future__ import annotations

import ast
import itertools
import random
import re

from qeforge.evaluation.pyparse import compile_module, parse
from qeforge.evaluation.sandbox import SandboxLimits, run_tests
from qeforge.evaluation.suites import suite_module

DEFAULT_RUBRIC = {"coverage": 40, "edge_cases": 30, "syntax": 15, "logic": 15}

# A fenced block, closed or cut off by the end of the output (a truncated generation).
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}

_SWAP_COMPARE = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_SWAP_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}


def extract_tests(output: str) -> str | None:
    """The code of the first python (or untagged) fenced block; else the whole output if it is
    itself a parseable test module; else None."""
    for match in _FENCE.finditer(output):
        if match.group(1).lower() in _PYTHON_TAGS:
            return match.group(2)
    if "def test_" in output:
        try:
            parse(output)
        except SyntaxError:
            return None
        return output
    return None


def _defines_tests(source: str) -> bool:
    """Compiles (compile() also catches what the parser lets through, e.g. a stray `return`)
    and defines at least one test_ function (a pytest function or a unittest method)."""
    try:
        tree = parse(source)
        compile_module(tree, "test_generated.py")
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_") for n in ast.walk(tree))


def _sites(tree: ast.AST) -> dict[str, list[tuple[int, int]]]:
    """Mutable spots by kind, as (index of the node in ast.walk order, operator index)."""
    sites: dict[str, list[tuple[int, int]]] = {"compare": [], "arith": [], "negate": [], "constant": []}
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare):
            sites["compare"] += [(i, k) for k, op in enumerate(node.ops) if type(op) in _SWAP_COMPARE]
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAP_ARITH:
            sites["arith"].append((i, 0))
        elif isinstance(node, (ast.If, ast.IfExp)):
            sites["negate"].append((i, 0))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, not docstrings
            sites["constant"].append((i, 0))
    return sites


def _mutate(source: str, index: int, op_index: int) -> str:
    tree = parse(source)
    node = next(itertools.islice(ast.walk(tree), index, None))
    if isinstance(node, ast.Compare):
        node.ops[op_index] = _SWAP_COMPARE[type(node.ops[op_index])]()
    elif isinstance(node, (ast.BinOp, ast.AugAssign)):
        node.op = _SWAP_ARITH[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value += 1
    else:
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    return ast.unparse(ast.fix_missing_locations(tree))


def make_mutants(focal_source: str, n: int = 3, seed: int = 0) -> list[str]:
    """Up to `n` distinct, compilable one-spot mutants of the focal code, the same for the same seed.

    Kinds take turns (comparison flip, arithmetic swap, negated condition, constant + 1), so
    a module full of numeric literals still gets its comparisons and branches mutated."""
    try:
        tree = parse(focal_source)
    except SyntaxError:
        return []
    original = ast.unparse(tree)
    rng = random.Random(seed)
    by_kind = list(_sites(tree).values())
    for sites in by_kind:
        rng.shuffle(sites)
    mutants: list[str] = []
    for site in itertools.chain.from_iterable(itertools.zip_longest(*by_kind)):
        if len(mutants) >= n:
            break
        if site is None:
            continue
        code = _mutate(focal_source, *site)
        if code != original and code not in mutants and _compiles(code):
            mutants.append(code)
    return mutants


def _compiles(source: str) -> bool:
    try:
        compile_module(source, "mutant.py")
    except (SyntaxError, ValueError):
        return False
    return True


def score_test_generation(
    output: str,
    inputs: dict,
    *,
    limits: SandboxLimits | dict = SandboxLimits(),
    n_mutants: int = 3,
    rubric: dict | None = None,
) -> dict:
    """One flat row of scores for a model's answer to a test-generation task.

    `inputs` holds `focal_code` (a function, a class or a module) and optionally `module`, the name
    the tests import it from; without one, the name the suite imports. A suite that takes `unittest`,
    the focal class or the focal module's imports for granted runs in the focal module's namespace
    (suites.py), as the benchmark harnesses that wrote it do.
    Suites may be pytest or unittest: pytest runs both.

    - Coverage is of `focal_function` (a method's qualified name) when the task names one, else of
      the whole focal code.
    - `edge_coverage` is branch coverage: the share of the focal code's branch outcomes the suite
      exercises. Boundaries and error paths live on branches (the `if x < lo` both ways, the
      `raise`), so it rewards exactly the edge cases the rubric asks for, measured, not guessed.
    - Coverage and edge points count only from passing tests: both are scaled by the pass rate.
    - `mutation_score` is reported but not in the rubric; it is 0 for a suite that fails on the
      original code, since failing tests would "kill" every mutant trivially.
    - Output without a compilable test_ function scores 0 and is not run.
    """
    weights = {**DEFAULT_RUBRIC, **(rubric or {})}
    limits = SandboxLimits(**limits) if isinstance(limits, dict) else limits  # an eval spec's YAML gives a dict
    tests = extract_tests(output)
    if tests is None or not _defines_tests(tests):
        return {
            "syntax_valid": 0, "n_tests": 0, "pass_rate": 0.0, "line_coverage": 0.0, "edge_coverage": 0.0,
            "mutation_score": 0.0, "rubric_score": 0.0, "sandbox_status": "not_run", "sandbox_ran": False,
            "escaped": False, "blocked": [], "duration_s": 0.0, "sandbox_isolation": None,
        }
    focal = inputs["focal_code"]
    module, tests = suite_module(tests, inputs.get("module"))
    result = run_tests(tests, focal, module, mutants=make_mutants(focal, n_mutants), limits=limits,
                       scope=inputs.get("focal_function"))
    pass_rate = result.passed / result.n_tests if result.n_tests else 0.0
    mutation = result.mutants_killed / result.mutants if result.mutants and pass_rate == 1.0 else 0.0
    points = (
        weights["coverage"] * result.line_coverage * pass_rate
        + weights["edge_cases"] * result.branch_coverage * pass_rate
        + weights["syntax"]
        + weights["logic"] * pass_rate
    )
    return {
        "syntax_valid": 1,
        "n_tests": result.n_tests,
        "pass_rate": pass_rate,
        "line_coverage": result.line_coverage,
        "edge_coverage": result.branch_coverage,
        "mutation_score": mutation,
        "rubric_score": 10 * points / sum(weights.values()),
        "sandbox_status": result.status,
        "sandbox_ran": True,
        "escaped": result.escaped,
        "blocked": list(result.blocked),
        "duration_s": result.duration_s,
        "sandbox_isolation": result.isolation,
    }
