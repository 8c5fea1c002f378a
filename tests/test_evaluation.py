"""Eval specs, the scorers on hand-made good and bad outputs, summaries, the policy artifact."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qeforge.categories import CATEGORIES
from qeforge.evaluation.parsers import parse_flaky_verdict, parse_review_lines, parse_uncovered_lines
from qeforge.evaluation.policy import load_policy, threshold_of, write_policy
from qeforge.evaluation.run import jsonable, overall_ratio, summarize
from qeforge.evaluation.scoring import score_outputs
from qeforge.evaluation.spec import EvalSpecError, load_spec


def _example(metadata, reference="", id_="x"):
    return {"id": id_, "metadata": metadata, "reference": reference}


def test_every_category_has_a_loadable_versioned_spec():
    for category in CATEGORIES:
        spec = load_spec(category)
        assert spec.task == category and spec.version >= 1
        assert spec.eval_split == "test" and spec.tune_split == "validation"
        assert len(spec.digest) == 12
    assert load_spec("code-review").target_ratio == 0.90
    assert load_spec("test-generation").target_ratio == 0.95


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"task": "poetry"}, "not a category"),
        ({"dataset": {"tune_split": "test", "eval_split": "test"}}, "other than the one"),
        ({"score": {"weights": {"line_f1": 0.5}, "range": [0, 1]}}, "sum to"),
        ({"parser": "qeforge.evaluation.parsers:no_such_parser"}, "cannot import"),
        ({"metrics": [{"module": "no_such_metric", "predictions": "output", "references": "reference"}]}, "not found"),
    ],
)
def test_a_broken_spec_fails_on_load_with_a_clear_error(tmp_path, patch, message):
    import yaml

    raw = yaml.safe_load(open(load_spec.__globals__["TASKS_DIR"] / "coverage-analysis.yaml"))
    raw.update(patch)
    (tmp_path / "coverage-analysis.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(EvalSpecError, match=message):
        load_spec("coverage-analysis", tmp_path)


def test_parsers_read_answers_in_the_formats_agents_write():
    assert parse_uncovered_lines("Uncovered lines: 4, 7\nLine coverage: 7/9 (78%)")["uncovered_lines"] == [4, 7]
    assert parse_uncovered_lines("uncovered lines: none")["uncovered_lines"] == []
    assert parse_uncovered_lines("I think it is fine")["uncovered_lines"] == [-1]
    assert parse_flaky_verdict("Verdict: Not flaky\nCause: none") == {"verdict": "not-flaky", "cause": "none"}
    assert parse_flaky_verdict("no idea")["verdict"] == "unparsed"
    assert parse_review_lines("Line 12: x. Also lines 3, 5 and L20.")["lines"] == [3, 5, 12, 20]


def test_coverage_scorer_rewards_exactly_the_uncovered_lines():
    spec = load_spec("coverage-analysis")
    truth = {"uncovered_lines": [4, 7], "executable_lines": [1, 2, 4, 7]}
    outputs = ["Uncovered lines: 4, 7", "Uncovered lines: 4", "Uncovered lines: 4, 7, 9", "Uncovered lines: none", "garbage"]
    frame, _ = score_outputs(spec, outputs, [_example(truth)] * len(outputs))
    assert frame["score"].tolist() == pytest.approx([1.0, 2 / 3, 0.8, 0.0, 0.0])
    # An empty listing answered "none" is right; answered with lines, wrong.
    empty, _ = score_outputs(spec, ["Uncovered lines: none", "Uncovered lines: 3"], [_example({"uncovered_lines": []})] * 2)
    assert empty["score"].tolist() == [1.0, 0.0]


def test_flaky_scorer_weighs_verdict_and_cause():
    spec = load_spec("flaky-detection")
    flaky = _example({"label": "flaky", "cause": "timing"})
    stable = _example({"label": "not-flaky", "cause": None})
    outputs = ["Verdict: flaky\nCause: timing", "Verdict: flaky\nCause: order-dependency", "Verdict: not-flaky\nCause: none",
               "Verdict: not-flaky\nCause: none", "Verdict: flaky\nCause: timing"]
    frame, aggregates = score_outputs(spec, outputs, [flaky, flaky, flaky, stable, stable])
    assert frame["score"].tolist() == pytest.approx([1.0, 0.7, 0.0, 1.0, 0.0])
    assert aggregates["verdict_accuracy"] == pytest.approx(3 / 5)
    # classes flaky: tp 2, fp 1, fn 1 -> F1 2/3; not-flaky: tp 1, fp 1, fn 1 -> F1 1/2; macro 7/12
    assert aggregates["verdict_macro_f1"] == pytest.approx(7 / 12)


def test_code_review_scorer_wants_the_same_lines_and_words_as_the_accepted_comment():
    spec = load_spec("code-review")
    meta = {"issue_lines": [16], "reference_comment": "Line 16: local variable `sum` shadows the builtin; rename it."}
    outputs = [
        "Line 16: local variable `sum` shadows the builtin; rename it.",
        "Line 16: `sum` shadows the builtin.",
        "Line 9: possible SQL injection in the query string.",
        "LGTM. Small, focused change; no issues found.",
    ]
    frame, _ = score_outputs(spec, outputs, [_example(meta)] * 4)
    scores = frame["score"].tolist()
    assert scores[0] == pytest.approx(1.0)
    assert scores[0] > scores[1] > scores[2] >= scores[3]
    assert frame["same_lines"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert 0 < frame["bleu"][1] < 1
    # Without an accepted comment the recorded answer is the reference.
    frame, _ = score_outputs(spec, ["Line 3: bug"], [_example({"issue_lines": [3]}, reference="Line 3: bug")])
    assert frame["rougeL"][0] == pytest.approx(1.0)


def _frame(adapter, base, claude, split="test", claude_reference=None):
    n = len(adapter)
    return pd.DataFrame({
        "split": split, "id": [f"e{i}" for i in range(n)],
        "claude_reference": claude_reference if claude_reference is not None else [True] * n,
        "adapter_score": adapter, "base_score": base, "claude_score": claude,
    })


def test_summary_pairs_with_claude_and_reports_the_target_honestly():
    spec = load_spec("coverage-analysis")
    frame = _frame([0.5, 1.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.5], [1.0, 1.0, 1.0, np.nan],
                   claude_reference=[True, True, True, False])
    s = summarize(spec, frame)
    # Paired on the three Claude-referenced rows: adapter 1.5/3, Claude 3/3 -> ratio 0.5.
    assert s["n_paired"] == 3 and s["quality_ratio"]["value"] == pytest.approx(0.5)
    assert s["quality_ratio"]["ci_low"] <= 0.5 <= s["quality_ratio"]["ci_high"]
    assert s["adapter_score_all"] == pytest.approx(2.5 / 4)
    assert s["adapter_gain_over_base"] == pytest.approx(1 / 3)
    assert s["meets_target"] is False
    json.dumps(s)  # JSON-safe


def test_overall_ratio_weights_categories_by_traffic():
    frames = {"a": _frame([1.0, 1.0], [0, 0], [1.0, 1.0]), "b": _frame([0.0, 1.0], [0, 0], [2.0, 2.0])}
    # a: ratio 1.0; b: 0.5/2 = 0.25; weights 3:1 -> 0.8125
    out = overall_ratio(frames, {"a": "test", "b": "test"}, {"a": 0.75, "b": 0.25})
    assert out["value"] == pytest.approx(0.8125)
    assert out["ci_low"] <= out["value"] <= out["ci_high"]


def test_policy_is_content_versioned_and_current_moves(tmp_path):
    entry = {"signal": "mean_logprob", "threshold": "inf", "expected_local_share": 0.0}
    first, path = write_policy({"code-review": entry}, {"value": 0.3}, tmp_path)
    again, _ = write_policy({"code-review": entry}, {"value": 0.3}, tmp_path)
    assert first["version"] == again["version"] and path.exists()
    second, _ = write_policy({"code-review": {**entry, "threshold": -0.5}}, {"value": 0.3}, tmp_path)
    assert second["version"] != first["version"]
    assert load_policy(tmp_path)["version"] == second["version"]
    assert load_policy(tmp_path, first["version"])["categories"]["code-review"]["threshold"] == "inf"
    assert threshold_of(first["categories"]["code-review"]) == math.inf
    with pytest.raises(FileNotFoundError, match="routing_policies"):
        load_policy(tmp_path / "nowhere")


def test_jsonable_keeps_infinities_readable():
    assert jsonable({"t": math.inf, "n": math.nan, "x": np.float32(0.5), "k": [np.int64(2)]}) == \
        {"t": "inf", "n": None, "x": 0.5, "k": [2]}
