"""Test-generation tasks: real focal code, pytest suites whose verdicts are known.

Expected values are obtained by running the focal code on each case, so the
"good" suite passes by construction and each "bad" suite fails in a specific,
realistic way (a wrong expectation, a syntax error, a wrong import).
"""

from __future__ import annotations

import contextlib
import random
import re
import types
from dataclasses import dataclass, replace

from qeforge.demo.functions import TEMPLATES, Focal, instantiate


@dataclass(frozen=True)
class Check:
    """One case run against the focal code: either a value or an exception type."""

    setup: tuple[str, ...]
    expr: str
    raises: str | None
    value: object = None
    edge: bool = False


def _split_case(case: str, is_class: bool) -> tuple[tuple[str, ...], str]:
    # Function cases are single expressions that may contain ';' inside strings.
    if not is_class:
        return (), case
    parts = [p.strip() for p in case.split(";")]
    return tuple(parts[:-1]), parts[-1]


def _roundtrips(value: object) -> bool:
    try:
        return eval(repr(value), {}) == value  # noqa: S307 - our own literals
    except Exception:
        return False


def run_checks(focal: Focal) -> list[Check]:
    """Run every case against the focal code and record what it really does."""
    namespace: dict = {}
    exec(compile(focal.source, "<focal>", "exec"), namespace)  # noqa: S102 - generated focal code
    checks = []
    for case, edge in [(c, False) for c in focal.cases] + [(c, True) for c in focal.edges]:
        setup, expr = _split_case(case, focal.template.is_class)
        scope = dict(namespace)
        try:
            for statement in setup:
                exec(statement, scope)  # noqa: S102
            value = eval(expr, scope)  # noqa: S307
        except Exception as exc:  # the case documents an error path
            checks.append(Check(setup, expr, type(exc).__name__, edge=edge))
            continue
        if _roundtrips(value):
            checks.append(Check(setup, expr, None, value, edge))
    return checks


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


def _describe(check: Check, index: int) -> str:
    if check.raises:
        return f"raises_{_snake(check.raises)}_{index}"
    args = check.expr[check.expr.find("(") + 1 :]
    if args.startswith(("''", '""', "[]", ")")):
        return f"empty_input_{index}"
    if args[:1] == "-":
        return f"negative_{index}"
    if isinstance(check.value, bool):
        return f"{str(check.value).lower()}_case_{index}"
    return f"{'edge' if check.edge else 'basic'}_{index}"


def _assertion(check: Check) -> str:
    value = check.value
    if value is None or isinstance(value, bool):
        return f"assert {check.expr} is {value!r}"
    if isinstance(value, float):
        return f"assert {check.expr} == pytest.approx({value!r})"
    return f"assert {check.expr} == {value!r}"


def render_test(check: Check, name: str, *, wrong: bool = False) -> str:
    body = [f"    {s}" for s in check.setup]
    if check.raises and wrong:
        body.append(f"    assert {check.expr} is not None")
    elif check.raises:
        body += [f"    with pytest.raises({check.raises}):", f"        {check.expr}"]
    else:
        shown = replace(check, value=_corrupt(check.value)) if wrong else check
        body.append("    " + _assertion(shown))
    return f"def {name}():\n" + "\n".join(body) + "\n"


def _corrupt(value: object) -> object:
    """A plausible but wrong expectation - the kind of slip a weak model makes."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return round(value + 0.5, 2)
    if isinstance(value, str):
        return value + "s" if value else " "
    if isinstance(value, list):
        return value[:-1] if value else [0]
    if isinstance(value, tuple):
        return value[:-1] if value else (0,)
    if isinstance(value, dict):
        return {**value, "extra": 1} if value else {"": ""}
    return 0


def render_suite(focal: Focal, checks: list[Check], *, parametrize: bool = False, wrong_index: int | None = None) -> str:
    """A pytest module importing the focal code from `focal`."""
    stem = _snake(focal.name)
    parts = ["import pytest\n", f"from focal import {focal.name}\n"]
    plain = list(enumerate(checks))
    if parametrize and not focal.template.is_class:
        table = [(i, c) for i, c in plain if not c.raises and not isinstance(c.value, float) and c.value is not None and i != wrong_index]
        if len(table) >= 3:
            rows = "\n".join(f"    (({c.expr[len(focal.name) + 1:-1]},), {c.value!r})," for _, c in table)
            parts.append(
                f'\n\n@pytest.mark.parametrize("args, expected", [\n{rows}\n])\n'
                f"def test_{stem}_returns_expected(args, expected):\n    assert {focal.name}(*args) == expected\n"
            )
            taken = {i for i, _ in table}
            plain = [(i, c) for i, c in plain if i not in taken]
    for i, check in plain:
        parts.append("\n\n" + render_test(check, f"test_{stem}_{_describe(check, i)}", wrong=i == wrong_index))
    return "".join(parts)


def _kwargs_safe(expr_args: str) -> bool:
    return "=" not in expr_args.replace("==", "")


PROMPTS = (
    "Write pytest tests for the following {kind}:\n```python\n{code}```",
    "Generate a pytest test suite for `{name}` (importable as `from focal import {name}`). "
    "Cover normal behaviour, boundaries and error handling.\n\n```python\n{code}```",
    "Add unit tests using pytest for this {kind}. The module is `focal`.\n\n```python\n{code}```",
    "Please write thorough pytest tests, including edge cases, for `{name}`:\n\n```python\n{code}```",
)


@dataclass
class Example:
    task: str
    metadata: dict
    outputs: dict[str, str]  # by outcome: success / partial / failure / skipped


SKIP_REASONS = (
    "Skipped: the focal module could not be imported in the sandbox (missing dependency), no tests generated.",
    "Skipped: token budget exhausted while planning the test suite.",
    "Skipped: duplicate of a task already handled in this session.",
)


def make_example(spec_seed: int, style_seed: int) -> Example:
    spec, style = random.Random(spec_seed), random.Random(style_seed)
    template = spec.choice(TEMPLATES)
    focal = instantiate(template, spec, style)
    checks = run_checks(focal)
    kind = "class" if template.is_class else "function"
    task = style.choice(PROMPTS).format(kind=kind, name=focal.name, code=focal.source)

    # Parametrized tables only hold positional calls; keyword cases stay as functions.
    parametrize = style.random() < 0.35 and all(_kwargs_safe(c.expr[len(focal.name) + 1 : -1]) for c in checks if not c.raises)
    suite = render_suite(focal, checks, parametrize=parametrize)
    intro = style.choice(
        (
            f"Here is a pytest suite for `{focal.name}` covering the main paths and the edge cases:\n\n",
            f"Tests for `{focal.name}`:\n\n",
            "",
            f"The suite below exercises normal inputs, boundaries and the error paths of `{focal.name}`.\n\n",
        )
    )
    success = f"{intro}```python\n{suite}```"

    happy = [c for c in checks if not c.edge] or checks[:1]
    partial = (
        f"Basic tests for `{focal.name}` (edge cases still to do):\n\n```python\n{render_suite(focal, happy)}```"
    )

    value_checks = [i for i, c in enumerate(checks) if not c.raises]
    failure_kind = spec.choice(("wrong_value", "wrong_value", "syntax", "import"))
    if failure_kind == "wrong_value" and value_checks:
        bad_suite = render_suite(focal, checks, wrong_index=spec.choice(value_checks))
    elif failure_kind == "import":
        bad_suite = render_suite(focal, checks).replace(f"from focal import {focal.name}", f"from {_snake(focal.name)} import {focal.name}")
    else:
        # Truncated generation: the model stopped mid-statement.
        full = render_suite(focal, checks)
        cut = full.rfind("assert ")
        bad_suite = full[: cut + len("assert ")] + f"{focal.name}(\n"
    failure = f"```python\n{bad_suite}```"

    return Example(
        task=task,
        metadata={"focal_code": focal.source, "entry_point": focal.name, "module": "focal"},
        outputs={"success": success, "partial": partial, "failure": failure, "skipped": style.choice(SKIP_REASONS)},
    )


class _Raises(contextlib.AbstractContextManager):
    def __init__(self, expected: type[BaseException]):
        self.expected = expected

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            raise AssertionError(f"DID NOT RAISE {self.expected.__name__}")
        return issubclass(exc_type, self.expected)


def pytest_shim() -> types.SimpleNamespace:
    """Just enough of pytest to run generated suites in-process (coverage tracing)."""
    return types.SimpleNamespace(raises=_Raises, approx=lambda v: v)
