"""Paired bootstrap confidence intervals and AUROC for the routing figures.

Eval sets per category are small (tens to hundreds of examples), so every
headline number (quality ratio, local share) is reported with a percentile
bootstrap interval. Resampling is *paired*: one index draw is applied to all
arrays, so per-example correlation (local and Claude scored on the same task)
is kept and the interval of a ratio is not inflated by task difficulty.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

NAN3 = (float("nan"), float("nan"), float("nan"))

# Cap on resampled values held at once (rows x n) so 2000 resamples of 10k examples stay ~64 MB.
_CHUNK_CELLS = 1 << 22


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    vectorized: bool = False,
) -> tuple[float, float, float]:
    """(point, low, high) of `statistic(*arrays)` by paired percentile bootstrap.

    With `vectorized=True` the statistic receives arrays of shape (rows, n) and
    must reduce along the last axis (e.g. `lambda x: x.mean(axis=-1)`); it is
    then evaluated on whole chunks of resamples instead of one call per resample.
    Resamples whose statistic is nan (e.g. a zero denominator) are ignored.
    """
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("paired bootstrap needs arrays of equal length")
    if n == 0:
        return NAN3
    point = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_resamples - start), n))
        if vectorized:
            values[start : start + len(idx)] = statistic(*(a[idx] for a in arrays))
        else:
            values[start : start + len(idx)] = [statistic(*(a[i] for a in arrays)) for i in idx]
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return point, float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return point, float(low), float(high)


def mean_ci(x, **kwargs) -> tuple[float, float, float]:
    """Bootstrap CI of the mean of `x`."""
    return bootstrap_ci(lambda a: a.mean(axis=-1), x, vectorized=True, **kwargs)


def _ratio_of_means(num: np.ndarray, den: np.ndarray):
    den_mean = den.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den_mean == 0, np.nan, num.mean(axis=-1) / den_mean)


def ratio_ci(num, den, **kwargs) -> tuple[float, float, float]:
    """Paired bootstrap CI of mean(num) / mean(den); nan where mean(den) is 0."""
    return bootstrap_ci(_ratio_of_means, num, den, vectorized=True, **kwargs)


def auroc(labels, scores) -> float:
    """ROC AUC of `scores` for binary `labels`; nan when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))
