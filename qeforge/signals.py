"""The routing signals, defined once: evaluation tunes thresholds on them, serving routes by them.

    mean_logprob:   the mean log-probability of the greedy answer's tokens, up to and including the
                    first stop token (`token_logprobs` per step, `answer_length`, `mean_logprob`);
    knn_similarity: the cosine similarity of the user text's MiniLM embedding to the nearest
                    known-good training row of the category (`knn_similarity`, `KnownGood`).

A threshold tuned offline means the same online only if both sides run this code; the serving test
`test_shim_signal_equals_the_evaluations` checks that they agree on the same prompt and adapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SIGNALS = ("mean_logprob", "knn_similarity")


def user_text(messages: list[dict]) -> str:
    """The text the knn signal embeds: every user turn, joined."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def token_logprobs(logits, tokens) -> np.ndarray:
    """log_softmax(logits)[row, token] per row, in float64 (logits: [rows, vocab], any float dtype)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    return logits[np.arange(len(logits)), np.asarray(tokens)] - log_norm


def answer_length(tokens: Sequence[int], stops: Sequence[int]) -> int:
    """Tokens up to and including the first stop token; past it a batched row is padding."""
    return next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))


def mean_logprob(logprobs: Sequence[float]) -> float:
    return float(np.mean(logprobs)) if len(logprobs) else -math.inf


def knn_similarity(known_good: KnownGood, category: str, conversations: list[list[dict]], embed) -> np.ndarray:
    """The knn signal of each conversation; `embed`: texts -> unit MiniLM vectors (sentence-transformers
    in evaluation, the same model on ONNX Runtime in the shim)."""
    return known_good.similarity(category, embed([user_text(c) for c in conversations]))


class KnownGood:
    """The `known_good` table's vectors per category, read once and searched in memory.

    known_good holds one dataset version's training rows: thousands, e.g. 10,000 x 384 float32 =
    15 MB, so an exact search is one matrix-vector product (~0.1 ms) where a LanceDB query costs
    ~4 ms (measured, cached table handle). Build a new one when the table is rewritten."""

    def __init__(self, db):
        from qeforge import store

        self.vectors: dict[str, np.ndarray] = {}
        if store.KNOWN_GOOD in db.table_names():
            rows = db.open_table(store.KNOWN_GOOD).to_arrow().select(["category", "vector"])
            categories = np.asarray(rows["category"].to_pylist())
            matrix = np.stack(rows["vector"].to_numpy(zero_copy_only=False)).astype(np.float32) if len(categories) \
                else np.zeros((0, 0), np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)  # stored unit vectors; normalized anyway, as cosine is
            matrix = matrix / np.where(norms > 0, norms, 1)
            self.vectors = {c: matrix[categories == c] for c in set(categories)}

    def similarity(self, category: str, vectors) -> np.ndarray:
        """Cosine similarity of each unit vector to its nearest known-good row of `category`; -1 if none."""
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = self.vectors.get(category)
        if rows is None or not len(vectors):
            return np.full(len(vectors), -1.0, dtype=np.float32)
        return (vectors @ rows.T).max(axis=1)
