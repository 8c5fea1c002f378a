"""Curation stage: LanceDB trajectories -> versioned per-category HF datasets."""

from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
from assets.metadata import counts, md_histogram, md_records, md_table
from pipelines.resources import CurationSettings, DatasetStoreResource, LanceDBResource
from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.curation.balance import cap_per_category, mix_rows
from qeforge.curation.categorize import CategoryClassifier, place, train_classifier
from qeforge.curation.dedup import deduplicate
from qeforge.curation.export import dataset_records, write_version
from qeforge.curation.gate import apply_gate
from qeforge.curation.report import curation_report, split_counts
from qeforge.curation.split import SPLITS, assign_splits, leakage_groups
from qeforge.embedding import EMBEDDING_DIM, EMBEDDING_MODEL, embed_texts, reusable_vectors
from qeforge.hashing import text_sha256
from qeforge.ingest import format_summary, import_exchanges

GROUP = "curation"


def stacked_vectors(frame: pd.DataFrame) -> np.ndarray:
    """The `vector` column as one (rows, dim) array; (0, dim) when no row passed, so every step runs on empty."""
    if frame.empty:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack(frame["vector"].to_numpy()).astype(np.float32)


@dg.asset(group_name=GROUP, kinds={"lancedb"})
def recorded_exchanges(context: dg.AssetExecutionContext, lancedb: LanceDBResource) -> dg.MaterializeResult:
    """The gateway's recorded exchanges imported as trajectories (source "exchanges"): Claude's answers to
    the fleet's real prompts, and local answers the fleet marked good (policy: qeforge/curation/exchanges.py)."""
    summary, report = import_exchanges(lancedb.connect())
    context.log.info(format_summary(summary.as_dict()))
    return dg.MaterializeResult(metadata={
        "exchanges_read": report["exchanges_read"],
        "trajectories": report["trajectories"],
        "imported": summary.imported,
        "updated": summary.updated,
        "already_present": summary.already_present,
        "quarantined": summary.quarantined_total,
        "skipped": md_table(report.get("skipped", {}), "reason"),
        **{f"skipped/{k}": v for k, v in report.get("skipped", {}).items()},
        "by_decision": md_table(report.get("by_decision", {}), "decision"),
        "feedback_rows": report.get("feedback_rows", 0),
        "feedback_unmatched": report.get("feedback_unmatched", 0),
    })


@dg.asset(group_name=GROUP, kinds={"lancedb", "pandas"}, deps=[recorded_exchanges])
def raw_trajectories(context: dg.AssetExecutionContext, lancedb: LanceDBResource) -> dg.Output[pd.DataFrame]:
    """Every validated trajectory in the ReasoningBank (imports and recorded exchanges), with the quarantine beside it."""
    db = lancedb.connect()
    frame = store.trajectories(db).to_pandas()
    quarantine = store.quarantine(db).to_arrow().select(["reason"]).to_pandas()
    read = len(frame) + len(quarantine)
    if frame.empty:
        raise dg.Failure(
            "The trajectories table is empty. Import data first: `qeforge demo-data` or "
            "`qeforge import --format jsonl PATH`."
        )
    return dg.Output(
        frame.drop(columns=["embedding"]).assign(
            stored_embedding=[None if v is None else np.asarray(v, dtype=np.float32).tolist() for v in frame["embedding"]]
        ),
        metadata={
            "dagster/row_count": len(frame),
            "quarantined": len(quarantine),
            "quarantine_rate": float(len(quarantine) / read),
            "quarantine_by_reason": md_table(counts(quarantine["reason"]) if len(quarantine) else {}, "reason"),
            "by_category": md_table(counts(frame["category"].fillna("(unlabeled)")), "category"),
            "by_domain": md_table(counts(frame["domain"].replace("", "(none)")), "domain"),
            "by_source": md_table(counts(frame["source"]), "import"),
            "by_model": md_table(counts(frame["model"]), "model"),
            "by_outcome": md_table(counts(frame["outcome"]), "outcome"),
            "quality_histogram": md_histogram(frame["quality"]),
            "lancedb_uri": lancedb.resolved_uri(),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    check_specs=[
        dg.AssetCheckSpec("rows_pass_gate", asset="quality_gated",
                          description="At least one trajectory passed the gate; otherwise says which conditions failed")
    ],
)
def quality_gated(raw_trajectories: pd.DataFrame, curation: CurationSettings):
    """Successful, in-scope trajectories at or above the quality, confidence and reuse gates; categories
    resolved from the recorded one or the producer's domain (the domain map), the rest left to the classifier."""
    kept, report = apply_gate(raw_trajectories, curation.gate())
    per_condition = [
        {"condition": c, "failing": report.failing[c], "charged_first": report.first_failing[c]} for c in report.failing
    ]
    yield dg.Output(
        kept,
        metadata={
            "dagster/row_count": len(kept),
            "rows_in": report.rows_in,
            "kept_share": float(report.kept / max(1, report.rows_in)),
            "explanation": report.explain(),
            "failing_by_condition": md_records(per_condition),
            **{f"failing/{c}": n for c, n in report.failing.items()},
            "out_of_scope_domains": md_table(report.out_of_scope_domains, "domain"),
            "failing_outcomes": md_table(report.outcomes, "outcome"),
            "gates": md_table({k: v for k, v in curation.gate().__dict__.items() if k.startswith("min_")}, "gate", "threshold"),
            "kept_by_category_source": md_table(counts(kept["category_source"]), "source"),
            "kept_by_import": md_table(counts(kept["source"]), "import"),
            "rows_in_by_import": md_table(counts(raw_trajectories["source"]), "import"),
            "kept_by_model": md_table(counts(kept["model"]), "model"),
        },
    )
    yield dg.AssetCheckResult(
        check_name="rows_pass_gate",
        passed=report.kept > 0,
        metadata={"kept": report.kept, "rows_in": report.rows_in, "explanation": report.explain(),
                  **{f"failing/{c}": n for c, n in report.failing.items()}},
    )


@dg.asset(group_name=GROUP, kinds={"lancedb", "pytorch"})
def trajectory_embeddings(
    context: dg.AssetExecutionContext,
    quality_gated: pd.DataFrame,
    lancedb: LanceDBResource,
    curation: CurationSettings,
) -> dg.Output[pd.DataFrame]:
    """One task embedding per kept trajectory: a stored vector is reused when it embeds the task text with
    the same model (agentic-qe's embed `name + description + tags` or `domain: task`), then the last
    curation's vector of the same text (`embeddings`, by the text's sha256); others are computed."""
    vectors, reusable = reusable_vectors(quality_gated["stored_embedding"].tolist(), quality_gated["embedding_model"].tolist(),
                                         quality_gated["embedding_text"].tolist())
    db = lancedb.connect()
    hashes = [text_sha256(t) for t in quality_gated["task"]]
    previous = store.task_vectors(db)
    cached = np.array([not r and h in previous for r, h in zip(reusable, hashes)], dtype=bool)
    for i in np.flatnonzero(cached):
        vectors[i] = previous[hashes[i]]
    missing = np.flatnonzero(~reusable & ~cached)

    def progress(done: int, total: int) -> None:
        if done == total or done % (curation.embedding_batch_size * 8) == 0:
            context.log.info(f"embedding {done}/{total} tasks ({100 * done / total:.0f}%)")

    if len(missing):
        texts = quality_gated["task"].iloc[missing].tolist()
        vectors[missing] = embed_texts(
            texts, batch_size=curation.embedding_batch_size, progress=progress
        )
    frame = quality_gated.drop(columns=["stored_embedding"]).assign(vector=list(vectors) if len(vectors) else [])
    store.write_embeddings(db, frame["id"], frame["category"], frame["quality"], vectors, hashes)
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "reused_stored": int(reusable.sum()),
            "reused_from_last_curation": int(cached.sum()),
            "computed": int(len(missing)),
            "stored_but_other_text": int(sum(v is not None and t not in (None, "task") for v, t in
                                             zip(quality_gated["stored_embedding"], quality_gated["embedding_text"]))),
            "embedding_model": EMBEDDING_MODEL,
            "dim": EMBEDDING_DIM,
        },
    )


@dg.asset(group_name=GROUP, kinds={"numpy", "pytorch"})
def deduplicated(trajectory_embeddings: pd.DataFrame, curation: CurationSettings) -> dg.Output[pd.DataFrame]:
    """Exact duplicates and pairs whose task AND answer are both >= the cosine threshold removed; best member kept."""
    vectors = stacked_vectors(trajectory_embeddings)
    result = deduplicate(trajectory_embeddings, vectors, curation.dedup_threshold, seed=curation.seed)
    removed = result.removed
    by_category = {
        c: {"rows_in": int(n), "removed_exact": int(((removed["category"] == c) & (removed["kind"] == "exact")).sum()),
            "removed_semantic": int(((removed["category"] == c) & (removed["kind"] == "semantic")).sum())}
        for c, n in trajectory_embeddings["category"].fillna("(unlabeled)").value_counts().sort_index().items()
    }
    return dg.Output(
        result.kept,
        metadata={
            "dagster/row_count": len(result.kept),
            "rows_in": len(trajectory_embeddings),
            "removed_exact": int((removed["kind"] == "exact").sum()),
            "removed_semantic": int((removed["kind"] == "semantic").sum()),
            "exact_groups": result.exact_groups,
            "semantic_groups": result.semantic_groups,
            "task_only_matches_kept": result.task_only_matches,
            "threshold": curation.dedup_threshold,
            "removed_by_category": md_records([{"category": c, **r} for c, r in by_category.items()]),
            **{f"removed/{c}": r["removed_exact"] + r["removed_semantic"] for c, r in by_category.items()},
            "sample_pairs": md_records(result.samples),
        },
    )


@dg.asset(group_name=GROUP, kinds={"scikitlearn", "json"})
def category_classifier(context: dg.AssetExecutionContext, deduplicated: pd.DataFrame,
                        curation: CurationSettings) -> dg.Output[dict]:
    """An embedding classifier trained on the rows whose category is recorded or mapped from the domain;
    `classifier` is None when they cover fewer than two categories. Saved with the dataset version, where
    the shim's `qeforge` model reads it."""
    labeled = deduplicated["category"].notna().to_numpy()
    labels = deduplicated.loc[labeled, "category"].tolist()
    if len(set(labels)) < 2:
        context.log.warning(f"no classifier: labeled rows cover {sorted(set(labels))}, it needs two categories")
        return dg.Output({"classifier": None}, metadata={"trained": False, "labeled_rows": len(labels)})
    classifier, accuracy, held_out = train_classifier(stacked_vectors(deduplicated)[labeled], labels, seed=curation.seed)
    return dg.Output(
        {"classifier": classifier.as_dict(), "heldout_accuracy": accuracy, "heldout_rows": held_out},
        metadata={"trained": True, "labeled_rows": len(labels), "heldout_accuracy": accuracy, "heldout_rows": held_out},
    )


def loaded_classifier(category_classifier: dict) -> CategoryClassifier | None:
    state = category_classifier["classifier"]
    return CategoryClassifier.from_dict(state) if state else None


@dg.asset(group_name=GROUP, kinds={"scikitlearn"})
def categorized(context: dg.AssetExecutionContext, deduplicated: pd.DataFrame, category_classifier: dict,
                curation: CurationSettings) -> dg.Output[pd.DataFrame]:
    """Categories from the record or the domain map kept; the rest assigned by the category classifier,
    or "none of the four" (categorize.place: the router's own rule), counted and left out. Without a
    classifier, unassigned rows are excluded and counted."""
    labeled = deduplicated["category"].notna().to_numpy()
    frame = deduplicated.copy()
    frame.loc[~labeled, "category_source"] = "classifier"
    classifier = loaded_classifier(category_classifier)
    metadata, none = {}, np.zeros(len(frame), dtype=bool)
    if classifier is None:
        frame = frame[labeled].reset_index(drop=True)
    elif (~labeled).any():
        vectors = stacked_vectors(deduplicated)
        placed, probability, similarity = place(
            classifier, vectors[~labeled], vectors[labeled], deduplicated.loc[labeled, "category"].tolist(),
            min_probability=curation.min_category_probability, min_similarity=curation.min_category_similarity)
        frame.loc[~labeled, "category"] = placed
        none = frame["category"].isna().to_numpy()
        metadata = {"mean_assignment_confidence": float(probability.mean()),
                    "mean_nearest_similarity": float(similarity.mean())}
    # "None of the four" rows are kept in the bank and counted here; no category's dataset takes them.
    kept = frame[~none].reset_index(drop=True)
    return dg.Output(
        kept,
        metadata={
            "dagster/row_count": len(kept),
            "recorded": int(labeled.sum()),
            "by_source": md_table(counts(frame["category_source"]), "source"),
            "assigned_by_classifier": int((kept["category_source"] == "classifier").sum()),
            "none_of_the_four": int(none.sum()),
            "none_by_import": md_table(counts(frame.loc[none, "source"]) if none.any() else {}, "import"),
            "excluded_no_classifier": int(len(deduplicated) - len(frame)),
            "by_category": md_table(counts(kept["category"]), "category"),
            "by_import": md_table(counts(kept["source"]), "import"),
            **metadata,
        },
    )


@dg.asset(group_name=GROUP, kinds={"pandas"})
def balanced(categorized: pd.DataFrame, curation: CurationSettings) -> dg.Output[pd.DataFrame]:
    """Every row of each category (its best `per_category_cap` when a cap is set): each category trains its own adapter."""
    frame, report = cap_per_category(categorized, CATEGORIES, curation.per_category_cap)
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "rows_in": len(categorized),
            "per_category_cap": curation.per_category_cap if curation.per_category_cap is not None else "none",
            "rows_used_vs_available": md_records([{"category": c, **r} for c, r in report.items()]),
            "dropped_by_cap": sum(r["dropped_by_cap"] for r in report.values()),
            **{f"used/{c}": r["used"] for c, r in report.items()},
            **{f"available/{c}": r["available"] for c, r in report.items()},
        },
    )


# The weekly refresh plus a day of slack: older than that, the UI flags the datasets as stale.
# output_required=False: with no rows there is no version to write, and everything downstream
# (base model, training) is skipped rather than failing on an empty dataset.
@dg.asset(group_name=GROUP, kinds={"huggingface"}, output_required=False, freshness_policy=dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=6)))
def curated_datasets(
    context: dg.AssetExecutionContext,
    balanced: pd.DataFrame,
    raw_trajectories: pd.DataFrame,
    quality_gated: pd.DataFrame,
    categorized: pd.DataFrame,
    category_classifier: dict,
    curation: CurationSettings,
    dataset_store: DatasetStoreResource,
    lancedb: LanceDBResource,
):
    """Stratified 70/15/15 splits, near-duplicate groups kept together, saved as versioned HF datasets."""
    if balanced.empty:
        context.log.warning("no rows reached the datasets, no version written: see the rows_pass_gate check and each step's row counts")
        return
    vectors = stacked_vectors(balanced)
    groups = leakage_groups(vectors, curation.leakage_threshold, seed=curation.seed)
    split = assign_splits(balanced, groups, tuple(curation.split_ratios), seed=curation.seed)
    frame = balanced.assign(group=[balanced["id"].iloc[g] for g in groups], split=split.to_numpy())
    records = dataset_records(frame)
    splits = split_counts(frame)
    quarantine = store.quarantine(lancedb.connect()).to_arrow().select(["reason"]).to_pandas()
    report = curation_report(raw_trajectories, quality_gated, categorized, frame, groups, quarantine["reason"])
    multitask = None
    if curation.multitask_dataset:
        # Mixed per split, so the multi-task splits never mix rows across the per-category splits.
        parts = [mix_rows(frame[frame["split"] == s], curation.target_mix) for s in SPLITS]
        multitask = dataset_records(pd.concat([p for p, _ in parts]))
        report["multi-task"] = {s: r for s, (_, r) in zip(SPLITS, parts)}
    version, path, written = write_version(records, dataset_store.path(), report=report,
                                           classifier=loaded_classifier(category_classifier), multitask=multitask)
    context.log.info(f"dataset version {version} at {path} ({'written' if written else 'unchanged, reused'})")
    train = frame[frame["split"] == "train"]
    store.write_known_good(lancedb.connect(), train["id"], train["category"], train["quality"],
                           np.stack(train["vector"].to_numpy()), version)
    yield dg.Output(
        {"version": version, "path": str(path), "splits": splits},
        metadata={
            "dataset_version": version,
            "path": dg.MetadataValue.path(str(path)),
            "written": written,
            "known_good_rows": len(train),
            "splits": md_records([{"category": c, **s} for c, s in splits.items()]),
            "dagster/row_count": len(frame),
            **{f"train_rows/{c}": s["train"] for c, s in splits.items()},
        },
    )
