"""Evaluation on someone else's data: typed reference sources, the suite harness, per-example metric
errors and the calibration check, on the benchmark-shaped fixture (tests/fixtures/benchmark_shaped)."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from qeforge.evaluation.calibration import reference_calibration
from qeforge.evaluation.checks import reference_scores_its_truth
from qeforge.evaluation.ground_truth import NoGroundTruth, focal_function
from qeforge.evaluation.reference_types import Rejected, convert
from qeforge.evaluation.run import summarize
from qeforge.evaluation.scoring import score_outputs
from qeforge.evaluation.spec import load_spec
from qeforge.evaluation.suites import suite_module

SHAPED = Path(__file__).parent / "fixtures" / "benchmark_shaped.jsonl"


def _shaped(category: str) -> list[dict]:
    rows = [json.loads(line) for line in SHAPED.read_text().splitlines()]
    return [{"id": r["id"], "task": r["task"], "reference": r["output"], "metadata": r["metadata"]}
            for r in rows if r["category"] == category]


def _demo(category: str, n: int = 300) -> list[dict]:
    """Claude's successful demo rows of a category, as the curation gate keeps them."""
    from qeforge.demo import generate_demo_lines

    rows = []
    for line in generate_demo_lines(n, seed=0, with_embeddings=False):
        try:
            r = json.loads(line)
        except ValueError:  # the demo's deliberately broken lines
            continue
        if isinstance(r, dict) and r.get("category") == category and str(r.get("model")).startswith("claude") \
                and r.get("outcome") == "success" and isinstance(r.get("metadata"), dict):
            rows.append({"id": r["id"], "task": r["task"], "reference": r["output"], "metadata": r["metadata"]})
    return rows


def _self_scored(category: str, examples: list[dict]) -> tuple[pd.DataFrame, dict]:
    """The recorded answers scored as predictions against their own truths, and the calibration."""
    spec = load_spec(category)
    frame, _ = score_outputs(spec, [e["reference"] for e in examples], examples, workers=2)
    return frame, reference_calibration(spec.score_range, frame)


@pytest.mark.parametrize("type_name, value, expected", [
    ("lines", [3, "5", 3], [3, 5]),
    ("lines", 4, "rejected:not_a_list"),
    ("lines", [0], "rejected:not_line_numbers"),
    ("lines", [2**40], "rejected:not_line_numbers"),
    ("lines", [True], "rejected:not_line_numbers"),
    ("verdict", "NonFlaky", "not-flaky"),
    ("verdict", "async wait", "flaky"),  # FlakyLens labels a flaky test by its cause
    ("verdict", "floating point", "flaky"),  # a cause the project files under `other` is still a cause
    ("verdict", "non-flaky", "not-flaky"),
    ("verdict", "maybe", "rejected:not_a_verdict"),
    ("verdict", float("nan"), "rejected:not_a_verdict"),
    ("cause", "Test Order Dependency", "order-dependency"),
    ("cause", None, "none"),
    ("cause", "non-flaky", "none"),
    ("cause", "flaky", "rejected:a_verdict"),
    ("cause", ["time"], "rejected:not_a_label"),
    ("text", "   ", "rejected:blank"),
    ("python", "def f(:", "rejected:not_python"),
    ("module_name", "../etc/x", "rejected:not_a_module_name"),
    ("module_name", "calc", "calc"),
])
def test_values_convert_to_the_declared_type_or_are_rejected_with_a_reason(type_name, value, expected):
    try:
        assert convert(type_name, value) == expected
    except Rejected as e:
        assert e.reason == expected


def test_a_count_of_uncovered_lines_falls_through_to_the_listing_and_is_counted():
    spec = load_spec("coverage-analysis")
    examples = _shaped("coverage-analysis")
    assert all(type(e["metadata"]["uncovered_lines"]) is int for e in examples)
    frame, calibration = _self_scored("coverage-analysis", examples)
    assert set(frame["source_uncovered_lines"]) == {"task.annotated_uncovered_lines"}
    assert set(frame["rejected_uncovered_lines"]) == {"metadata.uncovered_lines rejected:not_a_list"}
    assert frame["scorable"].all() and frame["score"].tolist() == [1.0] * len(examples) and calibration["passed"]
    assert calibration["rejected_sources"] == {"uncovered_lines": {"metadata.uncovered_lines rejected:not_a_list": 30}}
    # Without the listing nothing is left: unscorable with the rejection as the reason (never a crash).
    bare = {**examples[0], "task": "Which lines are uncovered?"}
    frame, _ = score_outputs(spec, ["Uncovered lines: 3"] * 3, [bare, {**bare, "metadata": {"uncovered_lines": "3"}},
                                                                 {**bare, "metadata": {}}])
    assert frame["scorable"].tolist() == [False] * 3
    assert frame["unscorable_reason"].tolist() == ["rejected:not_a_list"] * 2 + ["no_code_block"]


def test_flakylens_cause_labels_make_the_recorded_verdict_right():
    examples = _shaped("flaky-detection")
    frame, calibration = _self_scored("flaky-detection", examples)
    assert frame["verdict_correct"].tolist() == [1] * len(examples)
    assert frame["cause_correct"].tolist() == [1] * len(examples)
    assert calibration["passed"] and calibration["share_of_range"] == 1.0
    spec = load_spec("flaky-detection")
    wrong, _ = score_outputs(spec, ["Verdict: non-flaky", "Verdict: flaky\nCategory: network"], examples[:2])
    assert wrong["verdict_correct"].tolist() == [0, 1] and wrong["cause_correct"].tolist() == [0, 0]


def test_a_review_line_recorded_as_an_integer_falls_back_to_the_lines_the_comment_names():
    frame, calibration = _self_scored("code-review", _shaped("code-review"))
    with_line = frame[frame["rejected_issue_lines"] != ""]
    assert set(with_line["source_issue_lines"]) == {"reference.parsed.lines"} and len(with_line) == 12
    assert calibration["passed"]


def test_a_metric_that_raises_on_one_example_costs_only_that_example():
    spec = load_spec("coverage-analysis")
    examples = _shaped("coverage-analysis")[:3]
    # A line number past int64 makes set_f1's format check raise for the whole batch.
    outputs = [examples[0]["reference"], "Uncovered lines: 99999999999999999999999", examples[2]["reference"]]
    frame, _ = score_outputs(spec, outputs, examples)
    assert frame["scorable"].tolist() == [True, False, True]
    assert frame["unscorable_reason"][1] == "metric_error:set_f1" and math.isnan(frame["score"][1])
    assert frame["score"][0] == frame["score"][2] == 1.0


def test_suites_get_what_their_harness_gave_them():
    classeval = "class CalcTestAdd(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(Calc().add(math.pi, 0), math.pi)\n"
    module, suite = suite_module(classeval)
    assert module == "focal" and suite.splitlines()[0].startswith("import unittest; globals().update(")
    assert suite.endswith(classeval)
    # agentic-qe imports the code by its project path; the import is pointed at the focal module in place.
    aqe = "import pytest\nfrom src.calc.py import add, divide\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    assert suite_module(aqe) == ("focal", aqe.replace("from src.calc.py import", "from focal import"))
    assert suite_module("from .app.calc import (\n    add,\n)\n\ndef test_add():\n    assert add(1, 2) == 3\n", "calc")[1] == \
        "from calc import add\n\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    plain = "from roman import to_roman\n\n\ndef test_one():\n    assert to_roman(1) == 'I'\n"
    assert suite_module(plain) == ("roman", plain)  # imports what it uses: run as written


def test_the_task_names_the_method_a_suite_is_for():
    code = "```python\nclass Cart:\n    def add(self):\n        pass\n\n    def total(self):\n        return 0\n```\n\n"
    for ask in ("Test the `total` method of `Cart`.", "Please write tests for Cart.total.", "Tests for method total of Cart"):
        assert focal_function(code + ask) == "Cart.total"
    for ask in ("Write tests for the class above.", "Compare `add` and `total`."):
        with pytest.raises(NoGroundTruth, match="no_focal_function"):
            focal_function(code + ask)


@pytest.mark.slow
def test_classeval_method_suites_without_imports_pass_their_class_and_score_near_the_top():
    examples = _shaped("test-generation")[::5]  # one method of each class
    frame, calibration = _self_scored("test-generation", examples)
    assert frame["sandbox_status"].tolist() == ["ok"] * len(examples)
    assert frame["pass_rate"].tolist() == [1.0] * len(examples)
    assert set(frame["source_focal_function"]) == {"task.focal_function"}
    assert frame["score"].min() >= 9.0 and calibration["passed"]


def _claude_frame(claude_scores, reasons=None):
    n = len(claude_scores)
    reasons = reasons or [""] * n
    return pd.DataFrame({
        "split": "test", "id": [f"e{i}" for i in range(n)], "claude_reference": True,
        "adapter_score": 0.5, "base_score": 0.2, "claude_score": claude_scores, "claude_unscorable_reason": reasons,
        "scorable": [r == "" for r in reasons], "unscorable_reason": reasons, "source_label": "metadata.label",
        "rejected_label": "",
    })


def test_a_reference_that_fails_its_own_exam_fails_the_calibration_check():
    spec = load_spec("flaky-detection")
    # The run: the recorded verdicts marked wrong on 29 of 42 rows against a cause read as a verdict.
    summary = summarize(spec, _claude_frame([0.3] * 29 + [1.0] * 13))
    passed, metadata = reference_scores_its_truth(summary)
    assert passed is False and metadata["share_of_range"] == pytest.approx((0.3 * 29 + 13) / 42)
    assert summary["reference_calibration"]["truth_sources"] == {"label": {"metadata.label": 42}}
    ok = summarize(spec, _claude_frame([1.0, 1.0, 0.7, math.nan], ["", "", "", "metric_error:classification"]))
    passed, metadata = reference_scores_its_truth(ok)
    assert passed and metadata["reference_self_score"] == pytest.approx(0.9) and metadata["n_unscorable"] == 1
    assert reference_scores_its_truth(summarize(spec, _claude_frame([math.nan], ["no_label"])))[0] is False


@pytest.mark.parametrize("category", ["coverage-analysis", "flaky-detection", "code-review"])
def test_the_reference_passes_its_own_exam_on_demo_data(category):
    frame, calibration = _self_scored(category, _demo(category))
    assert len(frame) >= 10 and calibration["passed"], calibration


@pytest.mark.slow
def test_the_recorded_demo_suites_pass_their_own_exam():
    frame, calibration = _self_scored("test-generation", _demo("test-generation")[:8])
    assert calibration["n_scored"] == 8 and calibration["passed"], calibration
