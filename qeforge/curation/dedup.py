"""Exact and semantic deduplication: same task and same answer, keeping the best member of each group.

A pair of rows is a duplicate when
- their normalized task + answer text is identical (exact), or
- their tasks AND their answers are both at or above the cosine threshold, and the answers name the
  same numbers (line numbers, expected values), which an encoder barely tells apart (semantic).
A task-only match is not enough: tasks that share a long context (one class asked about different
methods, one function with different tests) are near-identical to an encoder while their answers
differ, and both are worth training on.

Cost: candidate pairs come from the task vectors already computed (an IVF scan); only rows in a
candidate pair whose answers name the same numbers are embedded again: the answer, and the task's
view (`task_view.py`) when the task is too long for the encoder. A corpus with few near-duplicates
pays for few.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qeforge.curation.neighbors import connected_components, ivf_pairs
from qeforge.curation.task_view import task_view

_WS = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
SAMPLE_PAIRS = 5  # removed pairs (and task-only matches kept) shown per category in the metadata
Embed = Callable[[list[str]], np.ndarray]


def normalized_hash(task: str, output: str) -> str:
    """Case and whitespace do not make a different trajectory."""
    text = _WS.sub(" ", task.strip().lower()) + "\x00" + _WS.sub(" ", output.strip().lower())
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DedupResult:
    kept: pd.DataFrame  # best member of each group, with `dup_group_size`
    removed: pd.DataFrame  # id, category, duplicate_of, kind, task_cosine, answer_cosine
    exact_groups: int
    semantic_groups: int
    task_only_matches: int  # candidate pairs whose tasks matched but answers did not: both kept
    samples: list[dict]  # removed pairs and task-only matches, a few per category, for a person to judge


def best_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Quality, then reuse, then id: the order that decides who represents a group."""
    return frame.sort_values(["quality", "usage_count", "id"], ascending=[False, False, True])


def load_tokenizer_and_embed() -> tuple[object, Embed]:
    """The offline MiniLM's tokenizer (for task views) and its unit-vector embedder."""
    from qeforge.embedding import embed_texts, load_encoder

    return load_encoder().tokenizer, embed_texts


def _exact_pairs(frame: pd.DataFrame) -> np.ndarray:
    hashes = [normalized_hash(t, o) for t, o in zip(frame["task"], frame["output"])]
    label = pd.Series(hashes).groupby(hashes).ngroup().to_numpy()
    members = pd.Series(range(len(frame))).groupby(label).agg(list)
    return np.array([(i, j) for idx in members for i, j in zip(idx, idx[1:])], dtype=np.int64).reshape(-1, 2)


def _embed_unique(texts: list[str], embed: Embed) -> np.ndarray:
    """Each distinct text once, shortest first: duplicates share answers, and length-sorted batches pad less."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    vectors = embed(unique)
    index = {t: i for i, t in enumerate(unique)}
    return vectors[[index[t] for t in texts]]


def confirm_pairs(frame: pd.DataFrame, candidates: np.ndarray, vectors: np.ndarray, threshold: float,
                  tokenizer=None, embed: Embed | None = None) -> pd.DataFrame:
    """Cosines of task views and answers for each candidate pair; `duplicate` when both pass.

    Cheapest test first: numbers are facts an encoder barely sees ("Uncovered lines: 3, 5, 9" vs
    "3, 5, 7" embed 0.95 apart), so answers naming different numbers are different answers and are
    never embedded. A task that fits the encoder keeps its vector; only longer ones get a view."""
    numbers = {int(r): sorted(_DIGITS.findall(frame["output"].iloc[int(r)])) for r in np.unique(candidates)}
    same_numbers = np.array([numbers[int(a)] == numbers[int(b)] for a, b in candidates], dtype=bool)
    out = pd.DataFrame({"a": candidates[:, 0], "b": candidates[:, 1], "task_cosine": np.nan, "answer_cosine": np.nan,
                        "duplicate": False})
    rows = np.unique(candidates[same_numbers])
    if len(rows) == 0:
        return out
    if embed is None:
        tokenizer, embed = load_tokenizer_and_embed()
    texts = frame["task"].iloc[rows].tolist()
    views = [task_view(t, tokenizer) for t in texts]
    tasks = vectors[rows].copy()
    long = [k for k, (view, text) in enumerate(zip(views, texts)) if view != text]
    if long:
        tasks[long] = _embed_unique([views[k] for k in long], embed)
    answers = _embed_unique(frame["output"].iloc[rows].tolist(), embed)
    position = {int(r): k for k, r in enumerate(rows)}
    ia = np.array([position[int(a)] for a in candidates[same_numbers, 0]])
    ib = np.array([position[int(b)] for b in candidates[same_numbers, 1]])
    task_cos = np.einsum("ij,ij->i", tasks[ia], tasks[ib])
    answer_cos = np.einsum("ij,ij->i", answers[ia], answers[ib])
    out.loc[same_numbers, "task_cosine"] = task_cos
    out.loc[same_numbers, "answer_cosine"] = answer_cos
    out.loc[same_numbers, "duplicate"] = (task_cos >= threshold) & (answer_cos >= threshold)
    return out


def deduplicate(frame: pd.DataFrame, vectors: np.ndarray, threshold: float, *, seed: int = 0,
                tokenizer=None, embed: Embed | None = None) -> DedupResult:
    """`vectors`: one unit task vector per row, from the same encoder as `embed` (default: MiniLM)."""
    n = len(frame)
    frame = frame.reset_index(drop=True)
    exact = _exact_pairs(frame)
    exact_set = {tuple(p) for p in exact.tolist()}
    candidates = np.array([p for p in ivf_pairs(vectors, threshold, seed=seed).tolist() if tuple(p) not in exact_set],
                          dtype=np.int64).reshape(-1, 2)
    confirmed = confirm_pairs(frame, candidates, vectors, threshold, tokenizer, embed)
    semantic = confirmed.loc[confirmed["duplicate"].astype(bool), ["a", "b"]].to_numpy(np.int64).reshape(-1, 2)
    groups = connected_components(n, np.concatenate([exact, semantic]))
    exact_groups = connected_components(n, exact)

    frame = frame.assign(_group=groups, _exact_group=exact_groups, _row=np.arange(n))
    leader = best_first(frame).groupby("_group", sort=False).head(1).set_index("_group")
    sizes = frame.groupby("_group").size()
    kept_mask = frame["_row"].isin(leader["_row"])
    removed = frame[~kept_mask]
    lead_rows = leader["_row"].loc[removed["_group"]].to_numpy()
    cosines = _pair_cosines(confirmed)
    removed_table = pd.DataFrame({
        "id": removed["id"].to_numpy(),
        "category": removed["category"].fillna("(unlabeled)").to_numpy() if n else [],
        "duplicate_of": leader["id"].loc[removed["_group"]].to_numpy(),
        "kind": np.where(leader["_exact_group"].loc[removed["_group"]].to_numpy() == removed["_exact_group"].to_numpy(),
                         "exact", "semantic"),
        # Cosines of the pair with the group's leader; a member linked through another member has none.
        "task_cosine": [cosines.get((min(r, k), max(r, k)), (np.nan, np.nan))[0] for r, k in zip(removed["_row"], lead_rows)],
        "answer_cosine": [cosines.get((min(r, k), max(r, k)), (np.nan, np.nan))[1] for r, k in zip(removed["_row"], lead_rows)],
    })
    kept = frame[kept_mask].assign(dup_group_size=sizes.loc[frame.loc[kept_mask, "_group"]].to_numpy())
    n_exact_groups = int((pd.Series(exact_groups).value_counts() > 1).sum())
    task_only = confirmed[~confirmed["duplicate"].astype(bool)]
    return DedupResult(
        kept=kept.drop(columns=["_group", "_exact_group", "_row"]).reset_index(drop=True),
        removed=removed_table,
        exact_groups=n_exact_groups,
        semantic_groups=int((sizes > 1).sum()) - n_exact_groups,
        task_only_matches=int(len(task_only)),
        samples=_samples(frame, removed_table, task_only),
    )


def _pair_cosines(confirmed: pd.DataFrame) -> dict[tuple[int, int], tuple[float, float]]:
    return {(int(a), int(b)): (float(t), float(s)) for a, b, t, s in
            confirmed[["a", "b", "task_cosine", "answer_cosine"]].itertuples(index=False)}


def _clip(text: str, n: int = 140) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _instruction(task: str) -> str:
    """The prose of a task: what a person needs to tell two tasks on one shared context apart."""
    from qeforge.curation.task_view import split_instruction

    return _clip(split_instruction(task)[0] or task)


def _sample(verdict: str, category: str, task_cos: float, answer_cos: float, first, second) -> dict:
    return {"verdict": verdict, "category": category, "task_cosine": round(float(task_cos), 3),
            "answer_cosine": round(float(answer_cos), 3), "task_1": _instruction(first["task"]),
            "task_2": _instruction(second["task"]), "answer_1": _clip(first["output"], 80),
            "answer_2": _clip(second["output"], 80)}


def _samples(frame: pd.DataFrame, removed: pd.DataFrame, task_only: pd.DataFrame) -> list[dict]:
    """A few removed pairs per category (1 = kept, 2 = dropped), then the closest task-only matches (both kept)."""
    by_id = frame.set_index("id")
    out = []
    for category, part in removed.sort_values(["category", "kind", "id"]).groupby("category", sort=True):
        for r in part.head(SAMPLE_PAIRS).itertuples(index=False):
            out.append(_sample(f"removed ({r.kind})", category, r.task_cosine, r.answer_cosine,
                               by_id.loc[r.duplicate_of], by_id.loc[r.id]))
    categories = frame["category"].fillna("(unlabeled)")
    for r in task_only.sort_values("task_cosine", ascending=False).head(SAMPLE_PAIRS).itertuples(index=False):
        out.append(_sample("kept both (answers differ)", categories.iloc[int(r.a)], r.task_cosine, r.answer_cosine,
                           frame.iloc[int(r.a)], frame.iloc[int(r.b)]))
    return out
