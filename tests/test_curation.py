"""Curation functions, tested without Dagster on vectors whose answer is known."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assets.curation_checks import cross_split_leakage
from qeforge.curation.balance import cap_per_category, mix_rows
from qeforge.curation.categorize import CategoryClassifier, train_classifier
from qeforge.curation.dedup import deduplicate
from qeforge.curation.export import content_version, dataset_records
from qeforge.curation.gate import GateRules, apply_gate
from qeforge.curation.neighbors import brute_force_pairs, ivf_pairs
from qeforge.curation.split import assign_splits, leakage_groups


FIXTURES = Path(__file__).parent / "fixtures"


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def perturb(v, cos, rng):
    """A unit vector at exactly cosine `cos` from unit vector v."""
    r = rng.standard_normal(v.shape)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos**2) * r).astype(np.float32)


def frame(n, **cols):
    base = {
        "id": [f"r{i:04d}" for i in range(n)],
        "task": [f"task number {i}" for i in range(n)],
        "output": [f"output {i}" for i in range(n)],
        "quality": [0.9] * n,
        "usage_count": [5] * n,
        "category": ["test-generation"] * n,
    }
    base.update(cols)
    return pd.DataFrame(base)


def test_gate_rejects_by_first_failing_reason():
    f = frame(5, outcome=["success", "failure", "success", "success", "success"],
              quality=[0.9, 0.95, 0.7, 0.9, 0.9], confidence=[0.9, 0.9, 0.9, 0.5, 0.9], usage_count=[3, 9, 9, 9, 2])
    kept, report = apply_gate(f.assign(domain=""), GateRules())
    assert kept["id"].tolist() == ["r0000"]
    assert report.first_failing == {"out_of_scope": 0, "outcome_not_success": 1, "quality_below_min": 1,
                                    "confidence_below_min": 1, "usage_below_min": 1}
    assert report.failing == report.first_failing  # each rejected row fails exactly one condition here
    assert report.explain().startswith("1 of 5 trajectories passed the gate")


def test_ivf_pairs_match_brute_force_on_planted_near_duplicates():
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((6000, 64)))
    planted = rng.choice(6000, 300, replace=False)
    dups = np.stack([perturb(base[i], 0.97, rng) for i in planted])
    vectors = np.concatenate([base, dups])
    exact = {tuple(p) for p in brute_force_pairs(vectors, 0.95)}
    found = {tuple(p) for p in ivf_pairs(vectors, 0.95)}
    assert {(int(i), 6000 + k) for k, i in enumerate(planted)} <= exact
    assert len(found & exact) / len(exact) >= 0.99
    assert found <= exact  # exact cosines inside the blocks: no false positives


def _class_task(instruction: str) -> str:
    """A ClassEval-style task: a long class (~590 word pieces, past MiniLM's 256), the question after it."""
    return f"```python\n{(FIXTURES / 'classeval_bank_account.py').read_text()}```\n\n{instruction}"


def _dedup(f):
    from qeforge.embedding import embed_texts

    return deduplicate(f, embed_texts(f["task"].tolist()), 0.95)


@pytest.mark.slow
def test_dedup_keeps_best_member_and_reports_kinds():
    answer = "def test_parse():\n    assert parse_date('2026-01-02') == date(2026, 1, 2)"
    f = frame(5, task=["Write pytest tests for parse_date(text), which reads ISO dates.",
                       "Write pytest tests for parse_date(text), which parses ISO dates.",
                       "WRITE  pytest tests for parse_date(text), which reads ISO dates.",
                       "Review this diff for SQL injection.", "Is test_upload flaky?"],
              output=[answer, answer, answer, "Line 3: use a bound parameter.", "Verdict: flaky"],
              quality=[0.85, 0.95, 0.9, 0.9, 0.9], usage_count=[3, 3, 9, 3, 3])
    result = _dedup(f)
    assert sorted(result.kept["id"]) == ["r0001", "r0003", "r0004"]  # r0001 has the best quality in the group
    kinds = dict(zip(result.removed["id"], result.removed["kind"]))
    # Rows 0 and 2 are one exact (case/space) group; row 1 joins it semantically and leads it.
    assert kinds == {"r0000": "semantic", "r0002": "semantic"}
    assert (result.exact_groups, result.semantic_groups) == (1, 0)
    assert set(result.removed["duplicate_of"]) == {"r0001"}
    assert result.kept.set_index("id").loc["r0001", "dup_group_size"] == 3
    assert result.removed.set_index("id").loc["r0000", "answer_cosine"] == pytest.approx(1.0, abs=1e-5)


def test_tasks_sharing_a_long_context_with_different_answers_are_both_kept():
    suite = (FIXTURES / "classeval_bank_account_suite.py").read_text()
    deposit, withdraw = suite.split("class BankAccountTestWithdraw")
    f = frame(2, task=[_class_task("Write a unittest suite for the `deposit` method of `BankAccount`."),
                       _class_task("Write a unittest suite for the `withdraw` method of `BankAccount`.")],
              output=[deposit, "import unittest\n\nclass BankAccountTestWithdraw" + withdraw])
    result = _dedup(f)
    assert len(result.kept) == 2 and result.removed.empty
    # The encoder alone cannot tell them apart: truncated to 256 pieces the tasks are identical.
    assert result.task_only_matches == 1
    # Different suites name different numbers, so the answers are not even embedded (cosine nan).
    assert result.samples[0]["verdict"] == "kept both (answers differ)" and not result.samples[0]["answer_cosine"] >= 0.95


def test_one_function_with_different_tests_and_different_uncovered_lines_is_kept():
    import json

    rows = {r["id"]: r for r in map(json.loads, (FIXTURES / "benchmark_trajectories.jsonl").read_text().splitlines())}
    pair = [rows["fizzbuzz-test-fizz"], rows["fizzbuzz-test-buzz"]]
    f = frame(2, task=[r["task"] for r in pair], output=[r["output"] for r in pair], category=["coverage-analysis"] * 2)
    result = _dedup(f)
    # Tasks 0.98 and answers 0.946 apart by cosine: only the line numbers differ, and they decide.
    assert len(result.kept) == 2 and result.task_only_matches == 1


@pytest.mark.slow
def test_a_paraphrased_task_with_the_same_answer_is_removed():
    suite = (FIXTURES / "classeval_bank_account_suite.py").read_text()
    f = frame(2, task=[_class_task("Write a unittest suite for the `deposit` method of `BankAccount`; cover invalid amounts."),
                       _class_task("Please write unittest tests for BankAccount.deposit, including invalid amounts.")],
              output=[suite, suite], quality=[0.9, 0.95])
    result = _dedup(f)
    assert result.kept["id"].tolist() == ["r0001"]
    removed = result.removed.iloc[0]
    assert (removed["id"], removed["kind"], removed["category"]) == ("r0000", "semantic", "test-generation")
    assert 0.95 <= removed["task_cosine"] < 0.999  # different words, measured on the task views
    assert result.samples[0]["verdict"] == "removed (semantic)"


def test_task_view_keeps_the_instruction_and_both_ends_of_a_long_context():
    from qeforge.curation.task_view import task_view
    from qeforge.embedding import load_encoder

    tokenizer = load_encoder().tokenizer
    task = _class_task("Write a unittest suite for the `withdraw` method.")
    view = task_view(task, tokenizer)
    assert len(tokenizer.tokenize(task)) > 256 >= len(tokenizer.tokenize(view)) + 2
    instruction, head_and_tail = view.split(" | ", 1)  # the instruction first, though the task ends with it
    assert "withdraw" in instruction
    assert head_and_tail.startswith("class bankaccount") and head_and_tail.endswith("self. amount = amount")
    assert task_view("Is this test flaky?", tokenizer) == "Is this test flaky?"  # short tasks are embedded whole


def test_near_duplicates_straddling_a_split_stay_together():
    """Pairs at cosine 0.93 survive dedup (0.95) but must never be split apart (leakage 0.90)."""
    rng = np.random.default_rng(2)
    anchors = unit(rng.standard_normal((120, 48)))
    twins = np.stack([perturb(a, 0.93, rng) for a in anchors])
    vectors = np.concatenate([anchors, twins])
    f = frame(240, category=["test-generation"] * 160 + ["code-review"] * 80)
    assert len(deduplicate(f, vectors, 0.95).kept) == 240  # nothing removed at 0.95
    groups = leakage_groups(vectors, 0.90)
    split = assign_splits(f, groups, (0.7, 0.15, 0.15), seed=0).to_numpy()
    assert all(split[i] == split[i + 120] for i in range(120))
    found = cross_split_leakage(f["task"].tolist(), vectors, split, 0.90)
    assert found["semantic_cross_split_pairs"] == 0 and found["exact_cross_split"] == 0
    # Without grouping, random splits would leak: the independent check must notice.
    shuffled = np.random.default_rng(0).permutation(split)
    assert cross_split_leakage(f["task"].tolist(), vectors, shuffled, 0.90)["semantic_cross_split_pairs"] > 0


def test_splits_are_stratified_and_near_target_ratios():
    f = frame(400, category=["test-generation"] * 300 + ["flaky-detection"] * 100)
    split = assign_splits(f, np.arange(400), (0.7, 0.15, 0.15), seed=0)
    for category, n in (("test-generation", 300), ("flaky-detection", 100)):
        shares = split[f["category"] == category].value_counts() / n
        assert abs(shares["train"] - 0.70) <= 0.01 and abs(shares["test"] - 0.15) <= 0.01


def test_balance_keeps_every_row_unless_a_cap_says_so():
    f = frame(100, category=["test-generation"] * 70 + ["code-review"] * 30, quality=np.linspace(0.8, 1.0, 100))
    out, report = cap_per_category(f, ["test-generation", "code-review"])
    assert len(out) == 100 and report["code-review"] == {"available": 30, "used": 30, "dropped_by_cap": 0}
    capped, report = cap_per_category(f, ["test-generation", "code-review"], cap=50)
    assert capped["category"].value_counts().to_dict() == {"test-generation": 50, "code-review": 30}
    assert report["test-generation"]["dropped_by_cap"] == 20
    # The best test-generation rows are the ones kept.
    assert capped[capped["category"] == "test-generation"]["quality"].min() >= f["quality"].iloc[20]


def test_multitask_mix_is_the_largest_subset_at_the_shares():
    f = frame(100, category=["test-generation"] * 70 + ["code-review"] * 30, quality=np.linspace(0.8, 1.0, 100))
    out, report = mix_rows(f, {"test-generation": 0.5, "code-review": 0.5})
    # code review decides: N = 30 / 0.5 = 60 -> 30 + 30, never upsampled.
    assert out["category"].value_counts().to_dict() == {"test-generation": 30, "code-review": 30}
    assert report["test-generation"] == {"available": 70, "share": 0.5, "selected": 30}


def test_classifier_learns_separable_categories_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    centers = unit(rng.standard_normal((3, 16))) * 3
    labels = ["test-generation", "code-review", "flaky-detection"]
    vectors = np.concatenate([c + 0.3 * rng.standard_normal((60, 16)) for c in centers]).astype(np.float32)
    y = [label for label in labels for _ in range(60)]
    model, accuracy, held_out = train_classifier(vectors, y)
    assert accuracy >= 0.95 and held_out == 36
    model.save(tmp_path / "c.json")
    again = CategoryClassifier.load(tmp_path / "c.json")
    assert again.predict(vectors)[0] == model.predict(vectors)[0]
    with pytest.raises(ValueError, match="at least two"):
        train_classifier(vectors[:10], ["code-review"] * 10)


def test_dataset_version_is_a_content_hash():
    f = frame(6, category=["code-review"] * 6, model=["m"] * 6, metadata=["{}"] * 6,
              group=[str(i) for i in range(6)], split=["train"] * 4 + ["validation", "test"])
    a = content_version(dataset_records(f))
    assert a == content_version(dataset_records(f.sample(frac=1, random_state=1)))  # row order does not matter
    changed = f.copy()
    changed.loc[0, "output"] = "different"
    assert content_version(dataset_records(changed)) != a


@pytest.mark.slow
def test_a_crash_while_writing_a_version_leaves_the_previous_one_in_use(tmp_path, monkeypatch):
    from datasets import DatasetDict

    from qeforge.categories import CATEGORIES
    from qeforge.curation.export import current_version, write_version

    def records(offset):
        n = 4 * len(CATEGORIES)
        f = frame(n, category=[c for c in CATEGORIES for _ in range(4)], model=["claude-sonnet-4-6"] * n,
                  group=[f"g{i}" for i in range(n)], metadata=["{}"] * n,
                  split=["train", "train", "validation", "test"] * len(CATEGORIES))
        return dataset_records(f.assign(output=[f"output {i + offset}" for i in range(n)]))

    first, first_path, _ = write_version(records(0), tmp_path, report={})
    real_save = DatasetDict.save_to_disk
    saved = []

    def crash_on_third(self, path, *args, **kwargs):  # the process dies halfway through the categories
        saved.append(path)
        if len(saved) == 3:
            raise KeyboardInterrupt("killed mid-write")
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(DatasetDict, "save_to_disk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_version(records(100), tmp_path, report={})
    assert current_version(tmp_path) == (first, first_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([first, "CURRENT"])
    assert (first_path / "manifest.json").exists()


@pytest.mark.slow
def test_the_optional_multitask_dataset_is_written_beside_the_categories_and_versioned(tmp_path):
    from datasets import load_from_disk

    from qeforge.categories import CATEGORIES
    from qeforge.curation.export import MULTITASK, write_version

    n = 10 * len(CATEGORIES)
    f = frame(n, category=[c for c in CATEGORIES for _ in range(10)], model=["claude-sonnet-4-6"] * n,
              group=[f"g{i}" for i in range(n)], metadata=["{}"] * n,
              split=(["train"] * 6 + ["validation"] * 2 + ["test"] * 2) * len(CATEGORIES))
    records = dataset_records(f)
    mixed = pd.concat([mix_rows(f[f["split"] == s], {"test-generation": 0.5, "code-review": 0.5})[0]
                       for s in ("train", "validation", "test")])
    plain, _, _ = write_version(records, tmp_path, report={})
    version, path, _ = write_version(records, tmp_path, report={}, multitask=dataset_records(mixed))
    assert version != plain  # same rows, one more dataset: another version
    multitask = load_from_disk(str(path / MULTITASK))
    # 6/2/2 rows per category and split, two categories at 50/50 -> 12/4/4.
    assert {s: multitask[s].num_rows for s in multitask} == {"train": 12, "validation": 4, "test": 4}
    assert set(multitask["train"]["category"]) == {"test-generation", "code-review"}


def test_a_category_without_rows_is_written_and_loads_back_empty(tmp_path):
    """The sensor's partial refresh (rows of two categories only) curates the others to 0 rows; the
    base model reads every category's train split, so an empty one must load, not crash."""
    from datasets import load_from_disk

    from qeforge.curation.export import write_version

    n = 6
    f = frame(n, category=["code-review"] * n, model=["claude-sonnet-4-6"] * n, group=[f"g{i}" for i in range(n)],
              metadata=["{}"] * n, split=["train"] * 4 + ["validation", "test"])
    _, path, _ = write_version(dataset_records(f), tmp_path, report={})
    empty = load_from_disk(str(path / "flaky-detection"))
    assert {s: empty[s].num_rows for s in empty} == {"train": 0, "validation": 0, "test": 0}
    assert "messages" in empty["train"].column_names
    assert load_from_disk(str(path / "code-review"))["train"].num_rows == 4


def test_curation_report_follows_each_category_through_the_steps():
    from qeforge.curation.report import curation_report

    raw = pd.DataFrame({"category": ["code-review"] * 4 + [None]})
    gated = pd.DataFrame({"category": ["code-review"] * 3 + [None]})
    categorized = pd.DataFrame({"category": ["code-review"] * 3, "category_source": ["recorded", "recorded", "classifier"]})
    used = pd.DataFrame({"category": ["code-review"] * 2})
    report = curation_report(raw, gated, categorized, used, np.array([0, 0]), pd.Series(["malformed_json"]))
    assert report["code-review"] == {"raw_recorded": 4, "gated_recorded": 3, "dedup_removed_recorded": 1,
                                     "after_dedup_and_categorization": 3, "used": 2, "dropped_by_cap": 1,
                                     "leakage_groups_multi": 1}


def test_curation_report_counts_the_corpus():
    from qeforge.curation.report import curation_report

    frame = pd.DataFrame({"category": ["code-review"] * 2, "category_source": ["recorded", "classifier"]})
    report = curation_report(frame, frame.head(2), frame.head(1), frame.head(1), np.array([0]), pd.Series(["x", "x"]))
    assert report["corpus"] == {"stored": 2, "quarantined": 2, "quarantined_by_reason": {"x": 2}, "gated": 2,
                                "dedup_removed": 1, "unlabeled_assigned_by_classifier": 0}


def test_stored_vectors_are_reused_only_for_the_task_text_and_model():
    from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL, reusable_vectors

    v = [3.0] + [0.0] * (EMBEDDING_DIM - 1)
    vectors, reusable = reusable_vectors([v, v, v, None, v[:10]], [EMBEDDING_MODEL, EMBEDDING_MODEL, "other", None,
                                                                   EMBEDDING_MODEL],
                                         [None, "domain: task", "task", None, "task"])
    assert reusable.tolist() == [True, False, False, False, False] and vectors[0, 0] == 1.0  # unit length


def test_embeddings_are_written_through_the_store(tmp_path):
    from qeforge import store

    db = store.connect(str(tmp_path / "lancedb"))
    categories = pd.Series(["code-review", np.nan])  # not categorized yet: NaN in the frame
    store.write_embeddings(db, ["a", "b"], categories, [0.9, 0.8], np.eye(2, 4, dtype=np.float32), ["ha", "hb"])
    table = db.open_table(store.EMBEDDINGS).to_arrow()
    assert (table["category"].to_pylist(), len(table["vector"][0])) == (["code-review", None], 4)
    # ... and read back as the next curation's cache, by the task text's hash
    cached = store.task_vectors(db)
    assert set(cached) == {"ha", "hb"} and cached["hb"].tolist() == [0.0, 1.0, 0.0, 0.0]
