"""Eval specs, the scorers on hand-made good and bad outputs, summaries, the policy artifact."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qeforge.categories import CATEGORIES
from qeforge.evaluation.parsers import parse_flaky_verdict, parse_review_lines, parse_uncovered_lines
from qeforge.evaluation.policy import load_policy, write_policy
from qeforge.evaluation.policy import jsonable
from qeforge.evaluation.run import overall_ratio, summarize
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


@pytest.mark.slow
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
    assert float(first["categories"]["code-review"]["threshold"]) == math.inf  # "inf" reads back as float inf
    with pytest.raises(FileNotFoundError, match="routing_policies"):
        load_policy(tmp_path / "nowhere")


def test_jsonable_keeps_infinities_readable():
    assert jsonable({"t": math.inf, "n": math.nan, "x": np.float32(0.5), "k": [np.int64(2)]}) == \
        {"t": "inf", "n": None, "x": 0.5, "k": [2]}


# --- Ground truth from the trajectory: rows of the benchmark-shaped fixture, which carry no metadata ---

def _benchmark(category):
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "benchmark_trajectories.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["id"]: {"id": r["id"], "task": r["task"], "reference": r["output"], "metadata": r.get("metadata") or {}}
            for r in rows if r.get("category") == category}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"generation": {"max_new_tokens": 64, "do_sample": True}}, r"unknown key\(s\) \['do_sample'\] in `generation`"),
        ({"promt": "chat"}, r"unknown key\(s\) \['promt'\] in the top level"),
        ({"prompt": "completion"}, "prompt 'completion' is not one of"),
        ({"metrics": [{"module": "set_f1", "predictions": "parsed.uncovered_lines", "references": ["metadata.x"],
                       "per_example": {}, "weight": 1}]}, r"unknown key\(s\) \['weight'\] in `metric`"),
        ({"metrics": [{"module": "set_f1", "predictions": "parsed.uncovered_lines", "references": ["task.nothing"]}]},
         "unknown source 'task.nothing'"),
        ({"metrics": [{"module": "set_f1", "predictions": "parsed.uncovered_lines", "references": ["metadata.x"]}]},
         r"reference_type is None; declare one of \['cause', 'lines'"),
        ({"metrics": [{"module": "set_f1", "predictions": "parsed.uncovered_lines", "references": ["metadata.x"],
                       "reference_type": "list"}]}, "reference_type is 'list'"),
    ],
)
def test_a_spec_with_an_unknown_key_or_source_is_an_error(tmp_path, patch, message):
    import yaml

    raw = yaml.safe_load(open(load_spec.__globals__["TASKS_DIR"] / "coverage-analysis.yaml"))
    raw.update(patch)
    (tmp_path / "coverage-analysis.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(EvalSpecError, match=message):
        load_spec("coverage-analysis", tmp_path)


@pytest.mark.slow
def test_test_generation_scores_a_classeval_class_from_the_task_and_counts_what_it_cannot_run():
    spec = load_spec("test-generation")
    rows = _benchmark("test-generation")
    examples = [rows[i] for i in ("classeval-bank-withdraw", "roman-unittest", "java-bounded-stack", "retry-no-code")]
    # The recorded reference suites run in the sandbox: a ClassEval-style unittest suite that uses the
    # class without importing it, and a unittest suite importing `roman`.
    frame, _ = score_outputs(spec, [e["reference"] for e in examples], examples, workers=2)
    withdraw, roman, java, no_code = frame.to_dict("records")
    assert withdraw["source_focal_code"] == "task.focal_code" and withdraw["sandbox_status"] == "ok"
    assert withdraw["n_tests"] == 3 and withdraw["pass_rate"] == 1.0 and 0 < withdraw["line_coverage"] < 1
    assert roman["pass_rate"] == 1.0 and roman["line_coverage"] == 1.0 and roman["score"] == pytest.approx(10.0)
    assert (java["scorable"], java["unscorable_reason"]) == (False, "unsupported_language_java")
    assert (no_code["scorable"], no_code["unscorable_reason"]) == (False, "no_code_block")
    assert math.isnan(java["score"]) and math.isnan(no_code["score"])
    # A suite that fails on the class scores below the reference that passes.
    broken = score_outputs(spec, [withdraw["output"].replace("-40", "-41")], examples[:1])[0]
    assert 0 < broken["pass_rate"][0] < 1 and broken["score"][0] < withdraw["score"]


@pytest.mark.slow
def test_coverage_truth_comes_from_the_annotated_listing_or_a_traced_run_and_lines_may_be_named_by_code():
    spec = load_spec("coverage-analysis")
    rows = _benchmark("coverage-analysis")
    clamp, median, fizz, java = (rows[i] for i in ("coverageeval-clamp", "coverageeval-median", "fizzbuzz-test-buzz", "java-coverage"))
    outputs = [
        clamp["reference"],                                           # by code: `return lo`, `return hi`, the raise
        "Uncovered lines: 5, 7",                                      # by number, one missed
        median["reference"],                                          # the listing with `!` marks
        "Uncovered lines: 3, 5, 7, 10",                               # traced: fizzbuzz(10) runs 2, 4, 6, 8, 9
        "Uncovered lines: 3",
    ]
    frame, _ = score_outputs(spec, outputs, [clamp, clamp, median, fizz, java], workers=2)
    assert frame["source_uncovered_lines"].tolist()[:4] == ["task.annotated_uncovered_lines"] * 3 + ["task.traced_uncovered_lines"]
    # clamp misses lines 3, 5, 7; naming 5 and 7 is precision 1, recall 2/3 -> F1 0.8.
    assert frame["score"].tolist()[:4] == pytest.approx([1.0, 0.8, 1.0, 1.0])
    assert frame["unscorable_reason"][4] == "unsupported_language_java"


def test_flaky_labels_in_other_taxonomies_are_read_from_the_recorded_answer_and_normalized():
    from qeforge.evaluation.flaky_causes import normalize_cause

    assert [normalize_cause(c) for c in ("ID", "OD-Vic", "Async Wait", "I/O", "Platform Dependency", "NOD", None)] == \
        ["unordered-collections", "order-dependency", "async-wait", "io", "platform", "other", "none"]
    spec = load_spec("flaky-detection")
    rows = _benchmark("flaky-detection")
    hashmap, stable = rows["flakylens-hashmap-order"], rows["flakylens-deterministic-parse"]
    outputs = ["Verdict: flaky\nCause: unordered collections", "Verdict: flaky\nCause: order-dependency",
               "Verdict: not flaky", "Verdict: flaky\nCause: time"]
    frame, _ = score_outputs(spec, outputs, [hashmap, hashmap, stable, stable])
    assert set(frame["source_cause"]) == {"reference.parsed.cause"}
    assert frame["score"].tolist() == pytest.approx([1.0, 0.7, 1.0, 0.0])


def test_code_review_without_metadata_scores_against_the_recorded_comment():
    spec = load_spec("code-review")
    rows = _benchmark("code-review")
    plain, with_line = rows["review-sql-fstring"], rows["review-mutable-default"]
    frame, _ = score_outputs(spec, [plain["reference"], "Looks good to me.", with_line["reference"], "Line 3: typo"],
                             [plain, plain, with_line, with_line])
    # No line named in the comment: the score is ROUGE-L alone; with one, half of it is the same line.
    assert math.isnan(frame["same_lines"][0]) and frame["score"][0] == pytest.approx(1.0)
    assert frame["score"][1] == pytest.approx(frame["rougeL"][1]) and frame["rougeL"][1] < 0.2
    assert frame["same_lines"].tolist()[2:] == [1.0, 0.0] and frame["score"][2] == pytest.approx(1.0)


def test_unscorable_examples_are_counted_with_reasons_and_left_out_of_every_score():
    spec = load_spec("coverage-analysis")
    frame = _frame([0.5, 1.0, np.nan], [0.0, 0.5, np.nan], [1.0, 1.0, np.nan]).assign(
        scorable=[True, True, False], unscorable_reason=["", "", "unsupported_language_java"],
        source_uncovered_lines=["task.annotated_uncovered_lines", "metadata.uncovered_lines", "none"])
    s = summarize(spec, frame)
    assert (s["n_eval"], s["n_scored"], s["n_paired"], s["n_unscorable"]) == (3, 2, 2, 1)
    assert s["unscorable_reasons"] == {"unsupported_language_java": 1}
    assert s["truth_sources"]["uncovered_lines"]["task.annotated_uncovered_lines"] == 1
    assert s["quality_ratio"]["value"] == pytest.approx(0.75)


@pytest.mark.slow
def test_a_split_with_nothing_scorable_escalates_everything_instead_of_raising(tmp_path):
    from qeforge.evaluation.routing import Prices
    from qeforge.evaluation.run import tune_routing
    from qeforge.evaluation.tracking import plot_scores

    spec = load_spec("test-generation")
    frame = pd.concat([_frame([5.0, 6.0], [1.0, 1.0], [8.0, 9.0], split="validation"),
                       _frame([np.nan], [np.nan], [np.nan], split="test")], ignore_index=True).assign(
        scorable=[True, True, False], unscorable_reason=["", "", "no_code_block"],
        mean_logprob=[-0.5, -0.2, -0.3], knn_similarity=[0.9, 0.8, 0.7], input_tokens=100, claude_output_tokens=50)
    summary = summarize(spec, frame)
    assert summary["n_paired"] == 0 and summary["unscorable_reasons"] == {"no_code_block": 1}
    assert summary["meets_target"] is False and summary["quality_ratio"]["value"] is None
    assert plot_scores(summary, tmp_path / "scores.png").exists()
    routing = tune_routing(spec, frame, Prices(), tmp_path)
    assert routing["threshold"] == "inf" and routing["confirmed"]["local_share"] == 0.0
    assert "every request escalates" in routing["note"]


# --- the evaluation's asset checks, as plain functions --------------------------------------------


def test_a_leaked_eval_example_fails_the_split_check():
    from qeforge.evaluation.checks import evaluated_on_test_split_only

    passed, metadata = evaluated_on_test_split_only({"a", "b"}, {"train": {"b"}, "validation": set(), "test": {"a", "b"}}, "test")
    assert (passed, metadata["in_train_or_validation"]) == (False, 1)


def test_scoring_exactly_the_test_split_passes_the_split_check():
    from qeforge.evaluation.checks import evaluated_on_test_split_only

    assert evaluated_on_test_split_only({"a"}, {"train": {"b"}, "validation": {"c"}, "test": {"a"}}, "test")[0]


def test_an_escaped_suite_fails_the_sandbox_check():
    from qeforge.evaluation.checks import sandbox_contained

    frame = pd.DataFrame({"adapter_syntax_valid": [True, True], "adapter_sandbox_ran": [True, True],
                          "adapter_escaped": [False, True], "adapter_sandbox_status": ["passed", "timeout"]})
    passed, metadata = sandbox_contained(frame)
    assert (passed, metadata["escapes"], metadata["timeouts"]) == (False, 1, 1)


def test_a_category_without_generated_code_passes_the_sandbox_check():
    from qeforge.evaluation.checks import sandbox_contained

    assert sandbox_contained(pd.DataFrame({"adapter_output": ["x"]})) == (
        True, {"sandboxed_runs": 0, "note": "this category runs no generated code"})


def test_no_gain_over_the_base_fails_the_base_check():
    from qeforge.evaluation.checks import adapter_beats_base

    summary = {"adapter_gain_over_base": 0.0, "adapter_score": {"value": 0.5}, "base_score": {"value": 0.5}}
    assert adapter_beats_base(summary)[0] is False
