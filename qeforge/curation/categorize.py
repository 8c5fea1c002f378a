"""Category classifier: logistic regression on sentence embeddings.

Trained on rows whose category the fleet recorded; it fills in the rest and is
saved as plain JSON (weights and classes, no pickle) so the serving shim can
route prompts with the very same model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qeforge.categories import CATEGORIES

# "none of the four", decided the same way where curation assigns a category and where the gateway
# routes a call: the classifier's top probability under 0.6 (a uniform guess over four is 0.25), or the
# nearest labeled (known-good) row of that category under cosine 0.65. A closed-set classifier places
# every text somewhere; the distance test is what catches texts unlike anything the category holds.
MIN_CATEGORY_PROBABILITY = 0.6
MIN_CATEGORY_SIMILARITY = 0.65


@dataclass
class CategoryClassifier:
    classes: list[str]
    coef: np.ndarray  # (classes, dim)
    intercept: np.ndarray  # (classes,)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
        p = self.probabilities(vectors)
        return [self.classes[i] for i in p.argmax(axis=1)], p.max(axis=1)

    def as_dict(self) -> dict:
        return {"classes": self.classes, "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "CategoryClassifier":
        return cls(d["classes"], np.asarray(d["coef"], dtype=np.float32), np.asarray(d["intercept"], dtype=np.float32))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict()))

    @classmethod
    def load(cls, path: Path) -> "CategoryClassifier":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _fit(vectors: np.ndarray, labels: list[str], seed: int) -> CategoryClassifier:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(vectors, labels)
    return CategoryClassifier(list(model.classes_), model.coef_.astype(np.float32), model.intercept_.astype(np.float32))


def train_classifier(
    vectors: np.ndarray, labels: list[str], *, seed: int = 0, holdout: float = 0.2
) -> tuple[CategoryClassifier, float, int]:
    """Fit on all labeled rows; report accuracy of a twin fitted without a stratified hold-out.
    Too few rows to hold any out (a category with one row, or fewer held-out rows than categories):
    accuracy is NaN on 0 held-out rows, and the fit uses everything."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    present = sorted(set(labels))
    if len(present) < 2:
        raise ValueError(f"the classifier needs labeled rows of at least two categories, found {present}")
    unknown = set(present) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"labels outside the category list: {sorted(unknown)}")
    held_out = int(np.ceil(holdout * len(labels)))
    if min(Counter(labels).values()) < 2 or held_out < len(present) or len(labels) - held_out < len(present):
        return _fit(vectors, labels, seed), float("nan"), 0
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=holdout, random_state=seed, stratify=labels)
    twin = _fit(vectors[train_idx], [labels[i] for i in train_idx], seed)
    predicted, _ = twin.predict(vectors[test_idx])
    accuracy = float(np.mean([p == labels[i] for p, i in zip(predicted, test_idx)]))
    return _fit(vectors, labels, seed), accuracy, len(test_idx)


def place(classifier: CategoryClassifier, vectors: np.ndarray, labeled: np.ndarray, labels: list[str], *,
          min_probability: float = MIN_CATEGORY_PROBABILITY, min_similarity: float = MIN_CATEGORY_SIMILARITY):
    """(category or None for "none", top probability, nearest same-category similarity) per row of
    `vectors` (unit rows), judged against the `labeled` unit rows with their `labels`."""
    predicted, probability = classifier.predict(vectors)
    similarity = np.full(len(vectors), -1.0, dtype=np.float32)
    labels = np.asarray(labels)
    for category in set(predicted):
        rows = np.flatnonzero(np.asarray(predicted) == category)
        own = labeled[labels == category]
        if len(own):  # 3,000 x 384 at most: one matrix product, no index needed
            similarity[rows] = (vectors[rows] @ own.T).max(axis=1)
    placed = [c if p >= min_probability and s >= min_similarity else None
              for c, p, s in zip(predicted, probability, similarity)]
    return placed, probability, similarity
