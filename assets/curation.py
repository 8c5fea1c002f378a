"""Curation stage: LanceDB trajectories -> versioned per-category HF datasets."""

from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from assets.metadata import counts, md_histogram, md_records, md_table
from pipelines.resources import CurationSettings, DatasetStoreResource, LanceDBResource
from qeforge import store
from qeforge.categories import CATEGORIES
from qeforge.curation.balance import cap_per_category, mix_rows
from qeforge.curation.categorize import train_classifier
from qeforge.curation.dedup import deduplicate
from qeforge.curation.export import dataset_records, write_version
from qeforge.curation.gate import apply_gate
from qeforge.curation.split import assign_splits, leakage_groups
from qeforge.embedding import EMBEDDING_DIM, embed_texts, same_model
from qeforge.locations import qeforge_home

GROUP = "curation"


def stacked_vectors(frame: pd.DataFrame) -> np.ndarray:
    """The `vector` column as one (rows, dim) array; (0, dim) when no row passed, so every step runs on empty."""
    if frame.empty:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack(frame["vector"].to_numpy()).astype(np.float32)


@dg.asset(group_name=GROUP, kinds={"lancedb", "pandas"})
def raw_trajectories(context: dg.AssetExecutionContext, lancedb: LanceDBResource) -> dg.Output[pd.DataFrame]:
    """Every validated trajectory in the ReasoningBank, with the quarantine beside it."""
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
    the same model (agentic-qe's embed `name + description + tags` or `domain: task`); others are computed."""
    reusable = [
        v is not None and same_model(m, curation.embedding_model) and len(v) == EMBEDDING_DIM and text in (None, "task")
        for v, m, text in zip(quality_gated["stored_embedding"], quality_gated["embedding_model"],
                              quality_gated["embedding_text"])
    ]
    vectors = np.zeros((len(quality_gated), EMBEDDING_DIM), dtype=np.float32)
    for i in np.flatnonzero(reusable):
        v = np.asarray(quality_gated["stored_embedding"].iloc[i], dtype=np.float32)
        vectors[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    missing = np.flatnonzero(~np.asarray(reusable, dtype=bool))

    def progress(done: int, total: int) -> None:
        if done == total or done % (curation.embedding_batch_size * 8) == 0:
            context.log.info(f"embedding {done}/{total} tasks ({100 * done / total:.0f}%)")

    if len(missing):
        texts = quality_gated["task"].iloc[missing].tolist()
        vectors[missing] = embed_texts(
            texts, model_name=curation.embedding_model, batch_size=curation.embedding_batch_size, progress=progress
        )
    frame = quality_gated.drop(columns=["stored_embedding"]).assign(vector=list(vectors) if len(vectors) else [])
    # The embeddings table serves nearest-known-good lookups (routing) and sensors.
    db = lancedb.connect()
    table = pa.table(
        {
            "id": frame["id"],
            "category": frame["category"],
            "quality": frame["quality"],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), EMBEDDING_DIM),
        }
    )
    db.create_table(store.EMBEDDINGS, data=table, mode="overwrite")
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "reused_stored": int(np.sum(reusable)),
            "computed": int(len(missing)),
            "stored_but_other_text": int(sum(v is not None and t not in (None, "task") for v, t in
                                             zip(quality_gated["stored_embedding"], quality_gated["embedding_text"]))),
            "embedding_model": curation.embedding_model,
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


@dg.asset(group_name=GROUP, kinds={"scikitlearn"})
def categorized(context: dg.AssetExecutionContext, deduplicated: pd.DataFrame, curation: CurationSettings) -> dg.Output[pd.DataFrame]:
    """Categories from the record or the domain map kept; the rest assigned by an embedding classifier
    trained on those rows. With fewer than two categories to learn from there is no classifier, and
    unassigned rows are excluded and counted."""
    vectors = stacked_vectors(deduplicated)
    labeled = deduplicated["category"].notna().to_numpy()
    labels = deduplicated.loc[labeled, "category"].tolist()
    frame = deduplicated.copy()
    frame.loc[~labeled, "category_source"] = "classifier"
    metadata = {}
    if len(set(labels)) >= 2:
        classifier, accuracy, held_out = train_classifier(vectors[labeled], labels, seed=curation.seed)
        predicted, confidence = classifier.predict(vectors[~labeled]) if (~labeled).any() else ([], np.array([]))
        frame.loc[~labeled, "category"] = predicted
        path = qeforge_home() / "models" / "category_classifier" / "classifier.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        classifier.save(path)
        metadata = {
            "classifier_heldout_accuracy": accuracy,
            "classifier_heldout_rows": held_out,
            "mean_assignment_confidence": float(confidence.mean()) if len(confidence) else 0.0,
            "classifier_path": dg.MetadataValue.path(str(path)),
        }
    else:
        context.log.warning(f"no classifier: labeled rows cover {sorted(set(labels))}, it needs two categories")
        frame = frame[labeled].reset_index(drop=True)
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "recorded": int(labeled.sum()),
            "by_source": md_table(counts(frame["category_source"]), "source"),
            "assigned_by_classifier": int((frame["category_source"] == "classifier").sum()),
            "excluded_no_classifier": int(len(deduplicated) - len(frame)),
            "by_category": md_table(counts(frame["category"]), "category"),
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
    splits = {c: {s: int(((frame["category"] == c) & (frame["split"] == s)).sum()) for s in ("train", "validation", "test")} for c in CATEGORIES}
    quarantine = store.quarantine(lancedb.connect()).to_arrow().select(["reason"]).to_pandas()
    recorded_gated = quality_gated["category"].value_counts()
    recorded_kept = categorized[categorized["category_source"] != "classifier"]["category"].value_counts()
    after_dedup = categorized["category"].value_counts()
    report = {
        c: {
            "raw_recorded": int((raw_trajectories["category"] == c).sum()),
            "gated_recorded": int(recorded_gated.get(c, 0)),
            "dedup_removed_recorded": int(recorded_gated.get(c, 0) - recorded_kept.get(c, 0)),
            "after_dedup_and_categorization": int(after_dedup.get(c, 0)),
            "used": int((frame["category"] == c).sum()),
            "dropped_by_cap": int(after_dedup.get(c, 0) - (frame["category"] == c).sum()),
            "leakage_groups_multi": int(pd.Series(groups[frame["category"].to_numpy() == c]).value_counts().gt(1).sum()),
        }
        for c in CATEGORIES
    }
    # Quarantined rows often have no trustworthy category: counted for the corpus as a whole.
    report["corpus"] = {
        "stored": len(raw_trajectories),
        "quarantined": len(quarantine),
        "quarantined_by_reason": {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
        "gated": len(quality_gated),
        "dedup_removed": len(quality_gated) - len(categorized),
        "unlabeled_assigned_by_classifier": int((categorized["category_source"] == "classifier").sum()),
    }
    classifier = None
    classifier_path = qeforge_home() / "models" / "category_classifier" / "classifier.json"
    if classifier_path.exists():
        from qeforge.curation.categorize import CategoryClassifier

        classifier = CategoryClassifier.load(classifier_path)
    multitask = None
    if curation.multitask_dataset:
        # Mixed per split, so the multi-task splits never mix rows across the per-category splits.
        parts = [mix_rows(frame[frame["split"] == s], curation.target_mix) for s in ("train", "validation", "test")]
        multitask = dataset_records(pd.concat([p for p, _ in parts]))
        report["multi-task"] = {s: r for s, (_, r) in zip(("train", "validation", "test"), parts)}
    version, path, written = write_version(records, dataset_store.path(), report=report, classifier=classifier,
                                           multitask=multitask)
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
