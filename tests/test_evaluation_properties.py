"""Property-based: whatever shape metadata, task text and answers take, every eval spec scores them
without raising, and every example ends scored (a finite score in the spec's range) or unscorable
with a reason. Hostile shapes: wrong types, NaN and infinities, empty and huge values, nesting,
code fences with the wrong language label, listings that are almost listings."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from qeforge.categories import CATEGORIES
from qeforge.evaluation.sandbox import SandboxLimits
from qeforge.evaluation.scoring import score_outputs
from qeforge.evaluation.spec import load_spec
from qeforge.evaluation.test_generation import score_test_generation

PY_FUNC = "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return min(x, hi)\n"
JAVA = "@Test\npublic void testX() {\n    assertEquals(1, Calc.one());\n}\n"
SUITE = "from focal import clamp\n\ndef test_low():\n    assert clamp(-1, 0, 5) == 0\n"
CLASS_SUITE = "class ClampTest(unittest.TestCase):\n    def test_low(self):\n        self.assertEqual(clamp(-1, 0, 5), 0)\n"

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.sampled_from(["flaky", "non-flaky", "NonFlaky", "async wait", "OD-Vic", "NOD", "unparsed", "", " ",
                              "3, 5", "focal", "../x", "def f(:", PY_FUNC, "9" * 400]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=8) | st.just(list(range(1, 3000))) | st.just([[[[[1]]]]])


def _fence(tag: str, body: str, closed: bool = True) -> str:
    return f"```{tag}\n{body}" + ("```" if closed else "")


# Pieces of task text and answers: real shapes, mislabelled ones and noise.
fragments = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        _fence("python", PY_FUNC), _fence("java", PY_FUNC), _fence("python", JAVA), _fence("", PY_FUNC),
        _fence("py", SUITE), _fence("python", CLASS_SUITE, closed=False), _fence("rust", SUITE),
        _fence("", "> def f(x):\n!     return x\n"), _fence("", "> def f(x):\nnot a marker\n! x\n"),
        _fence("", "  1 | def f(x):\n  2 |     return x\n"), _fence("python", "(" * 300), _fence("python", "x = 1\x00"),
        "Uncovered lines: 3, 5", "Uncovered lines: 99999999999999999999999", "uncovered lines: none", "`return lo`",
        "Verdict: flaky\nCategory: async wait", "Verdict: non-flaky", "Verdict: maybe\nCause: ???",
        "Line 12: rename this.", "lines 0, -1 and L99999999999999999999", "Write tests for the `clamp` function.",
        "x" * 20_000,
    ]),
)
texts = st.lists(fragments, max_size=4).map("\n\n".join)


def metadata_keys(spec) -> list[str]:
    sources = [s for m in spec.metrics for s in (m.predictions, *m.references)]
    sources += [s for group in ((spec.scorer or {}).get("inputs") or {}).values() for s in group]
    return sorted({s.partition(".")[2] for s in sources if s.startswith("metadata.")})


def examples_for(spec):
    keys = metadata_keys(spec)
    metadata = st.one_of(st.fixed_dictionaries({}, optional={k: values for k in keys}),
                         st.dictionaries(st.sampled_from(keys + ["other"]), values, max_size=4), values)
    return st.lists(st.fixed_dictionaries({"task": texts, "reference": texts, "metadata": metadata, "output": texts}),
                    min_size=1, max_size=4)


def _check(spec, frame, n):
    lo, hi = spec.score_range
    assert len(frame) == n
    for row in frame.to_dict("records"):
        if row["scorable"]:
            assert math.isfinite(row["score"]) and lo <= row["score"] <= hi, row
        else:
            assert row["unscorable_reason"] and math.isnan(row["score"]), row


@pytest.mark.parametrize("category", [c for c in CATEGORIES if c != "test-generation"])
def test_text_specs_score_hostile_rows_without_raising(category):
    spec = load_spec(category)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(examples_for(spec))
    def check(rows):
        examples = [{"id": str(i), **{k: r[k] for k in ("task", "reference", "metadata")}} for i, r in enumerate(rows)]
        frame, _ = score_outputs(spec, [r["output"] for r in rows], examples, workers=1)
        _check(spec, frame, len(rows))

    check()


def test_test_generation_truths_from_hostile_rows_end_scored_or_unscorable():
    """The spec's sources on hostile rows; the answers hold no runnable suite, so no sandbox starts here
    (the next test runs the sandbox)."""
    spec = load_spec("test-generation")

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(examples_for(spec), st.sampled_from(["", "no code here", _fence("java", SUITE), _fence("python", "def test_x(:")]))
    def check(rows, output):
        examples = [{"id": str(i), **{k: r[k] for k in ("task", "reference", "metadata")}} for i, r in enumerate(rows)]
        frame, _ = score_outputs(spec, [output] * len(rows), examples, workers=1)
        _check(spec, frame, len(rows))
        assert not frame.get("sandbox_ran", frame["scorable"] & False).astype(bool).any()

    check()


@pytest.mark.slow
def test_the_sandbox_rubric_scores_hostile_suites_without_raising():
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.sampled_from([SUITE, CLASS_SUITE, "from .pkg.clamp import clamp\n" + SUITE, "import nowhere\n" + SUITE,
                            SUITE + "\ndef test_name():\n    assert undefined_name\n", "def test_loop():\n    while True: pass\n"]),
           st.sampled_from(["python", "", "py"]), st.sampled_from([PY_FUNC, "x = 1\n", "class A:\n    pass\n"]),
           st.sampled_from([None, "clamp", "A.nothing", "not a name"]))
    def check(suite, tag, focal, scope):
        row = score_test_generation(_fence(tag, suite), {"focal_code": focal, "focal_function": scope}, n_mutants=1,
                                    limits=SandboxLimits(timeout_s=2))
        assert 0.0 <= row["rubric_score"] <= 10.0 and not row["escaped"]

    check()
