"""Confidence-threshold routing between a local adapter and Claude.

A router answers locally when a confidence signal is >= t and escalates to
Claude otherwise. On a validation split we sweep every candidate t, pick the
one that keeps the most traffic local while blended quality stays >= a target
fraction of all-Claude quality, then confirm that t on the test split with a
bootstrap CI. RouteLLM's metrics (Ong et al. 2024: PGR, CPT, APGR) summarise
the signal independently of any one target.

Scores are assumed non-negative and higher-is-better (0-10 rubric, 0-1 F1).
If Claude's mean score is 0 the quality ratio is defined as 1.0 whenever the
blended quality is >= 0 (nothing is lost relative to a Claude that scores 0)
and 0.0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qeforge.evaluation.stats import auroc, bootstrap_ci

# Cumulative sums leave ~1e-15 relative noise; a ratio sitting exactly on the
# target (e.g. 9.5/10 vs 0.95) must not fail because of it.
_EPS = 1e-9


@dataclass(frozen=True)
class Prices:
    """USD prices: Claude Sonnet list prices per million tokens and the local server's hourly cost."""

    claude_input_per_mtok: float = 3.0
    claude_output_per_mtok: float = 15.0
    local_per_hour: float = 0.0
    local_requests_per_hour: float = 3600.0

    def claude_cost(self, input_tokens, output_tokens) -> np.ndarray:
        """Per-request USD; e.g. 1000 in + 500 out = 0.003 + 0.0075 = $0.0105."""
        return (np.asarray(input_tokens, dtype=float) * self.claude_input_per_mtok
                + np.asarray(output_tokens, dtype=float) * self.claude_output_per_mtok) / 1e6

    def local_cost(self, n=1):
        """USD for n local requests: the hourly cost spread over the hourly throughput."""
        return n * self.local_per_hour / self.local_requests_per_hour


def _arrays(confidence, local_score, claude_score):
    conf, local, claude = (np.asarray(a, dtype=float) for a in (confidence, local_score, claude_score))
    if not len(conf) == len(local) == len(claude):
        raise ValueError("confidence, local_score and claude_score must have equal length")
    if len(conf) == 0:
        raise ValueError("routing needs at least one example")
    if np.isnan(conf).any():
        raise ValueError("confidence contains nan")
    return conf, local, claude


def _claude_costs(n, input_tokens, output_tokens, prices: Prices) -> np.ndarray:
    """Per-request Claude cost; missing token counts count as 0 tokens (cost then tracks local infra only)."""
    tokens_in = np.zeros(n) if input_tokens is None else input_tokens
    tokens_out = np.zeros(n) if output_tokens is None else output_tokens
    return np.broadcast_to(prices.claude_cost(tokens_in, tokens_out), (n,))


def _quality_ratio(blended, claude_mean):
    """blended / claude_mean, with the module's convention for a zero Claude mean."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(claude_mean == 0, np.where(blended >= 0, 1.0, 0.0), blended / claude_mean)


def sweep(confidence, local_score, claude_score, *, input_tokens=None, output_tokens=None,
          prices: Prices = Prices()) -> pd.DataFrame:
    """Quality and cost at every distinct confidence threshold plus +inf (all escalate).

    One ascending sort; for the threshold at the i-th distinct value the j
    examples before it are escalated and the rest stay local, so with prefix
    sums P (leading 0) every row is O(1):
        blended_total(j) = P_claude[j] + (P_local[n] - P_local[j])
        cost_total(j)    = P_claude_cost[j] + (n - j) * local_cost_per_request
    j = 0 (lowest threshold) is all local and j = n (+inf) is exactly all
    Claude, so the +inf row has quality_ratio 1.0 and savings 0 with no rounding.
    """
    conf, local, claude = _arrays(confidence, local_score, claude_score)
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    c = conf[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])  # first index of each distinct value
    j = np.r_[starts, n]  # escalated count per row
    thresholds = np.r_[c[starts], np.inf]

    def prefix(x):
        return np.r_[0.0, np.cumsum(x[order])]

    p_local, p_claude = prefix(local), prefix(claude)
    p_claude_cost = prefix(_claude_costs(n, input_tokens, output_tokens, prices))
    blended = (p_claude[j] + (p_local[n] - p_local[j])) / n
    cost = (p_claude_cost[j] + (n - j) * prices.local_cost()) / n
    all_claude_cost = p_claude_cost[n] / n
    return pd.DataFrame({
        "threshold": thresholds,
        "local_share": (n - j) / n,
        "claude_share": j / n,
        "blended_quality": blended,
        "quality_ratio": _quality_ratio(blended, p_claude[n] / n),
        "cost_per_1k": 1000 * cost,
        "savings_per_1k": 1000 * (all_claude_cost - cost),
    })


def select_threshold(sweep_df: pd.DataFrame, target_ratio: float = 0.95) -> pd.Series:
    """Row with the largest local share whose quality_ratio >= target_ratio.

    Ties go to higher blended quality, then higher threshold (the stricter
    router). The +inf row has ratio 1.0, so some row always qualifies for a
    target <= 1.
    """
    ok = sweep_df[sweep_df["quality_ratio"] >= target_ratio - _EPS]
    if ok.empty:
        raise ValueError(f"no threshold reaches quality ratio {target_ratio}")
    cols = ["local_share", "blended_quality", "threshold"]
    return ok.sort_values(cols, ascending=False, kind="stable").iloc[0]


def apply_threshold(threshold: float, confidence, local_score, claude_score, *, input_tokens=None,
                    output_tokens=None, prices: Prices = Prices(), n_resamples: int = 2000,
                    seed: int = 0) -> dict:
    """Figures for a fixed threshold on another split, quality ratio with a paired 95% bootstrap CI."""
    conf, local, claude = _arrays(confidence, local_score, claude_score)
    is_local = conf >= threshold
    blended = np.where(is_local, local, claude)
    ratio, low, high = bootstrap_ci(lambda b, c: _quality_ratio(b.mean(axis=-1), c.mean(axis=-1)),
                                    blended, claude, n_resamples=n_resamples, seed=seed, vectorized=True)
    claude_costs = _claude_costs(len(conf), input_tokens, output_tokens, prices)
    cost = np.where(is_local, prices.local_cost(), claude_costs).mean()
    return {
        "threshold": float(threshold),
        "n": len(conf),
        "local_share": float(is_local.mean()),
        "claude_share": float(1 - is_local.mean()),
        "blended_quality": float(blended.mean()),
        "claude_quality": float(claude.mean()),
        "quality_ratio": float(ratio),
        "quality_ratio_low": low,
        "quality_ratio_high": high,
        "cost_per_1k": float(1000 * cost),
        "savings_per_1k": float(1000 * (claude_costs.mean() - cost)),
    }


def pgr_curve(confidence, local_score, claude_score) -> pd.DataFrame:
    """RouteLLM performance-gap-recovered vs Claude call share, lowest confidence escalated first.

    PGR = (quality(router) - quality(local only)) / (quality(Claude only) - quality(local only)),
    from 0 at claude_share 0 to 1 at claude_share 1. If Claude is not better
    than local (gap <= 0) PGR is undefined and the column is nan.
    """
    df = sweep(confidence, local_score, claude_score).sort_values("claude_share", ignore_index=True)
    weak, strong = df["blended_quality"].iloc[0], df["blended_quality"].iloc[-1]
    gap = strong - weak
    pgr = (df["blended_quality"] - weak) / gap if gap > 0 else np.nan
    return pd.DataFrame({"claude_share": df["claude_share"], "pgr": pgr})


def cpt(curve: pd.DataFrame, x: float) -> float:
    """Call-performance threshold: smallest Claude call share with PGR >= x.

    Returns 0.0 when PGR is undefined (local already matches Claude: no Claude calls needed).
    """
    if not 0 < x <= 1:
        raise ValueError("x must lie in (0, 1]")
    if curve["pgr"].isna().all():
        return 0.0
    return float(curve.loc[curve["pgr"] >= x - _EPS, "claude_share"].min())


def apgr(curve: pd.DataFrame) -> float:
    """Average PGR: trapezoid area under PGR vs Claude call share on [0, 1]; nan when PGR is undefined."""
    if curve["pgr"].isna().all():
        return float("nan")
    return float(np.trapezoid(curve["pgr"], curve["claude_share"]))


def signal_auroc(confidence, local_score, claude_score, target_ratio: float = 0.95) -> float:
    """How well the signal ranks 'good' local answers (local >= target_ratio * claude) above bad ones."""
    conf, local, claude = _arrays(confidence, local_score, claude_score)
    return auroc(local >= target_ratio * claude, conf)


def plot_quality_cost(sweep_df: pd.DataFrame, chosen_threshold: float, target_ratio: float,
                      path: str | Path, title: str) -> Path:
    """PNG: quality ratio (left axis) and cost per 1k (right axis) vs Claude call share, chosen point marked."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    chosen = sweep_df[sweep_df["threshold"] == chosen_threshold]
    if chosen.empty:
        raise ValueError(f"threshold {chosen_threshold} is not a row of the sweep")
    chosen = chosen.iloc[0]
    df = sweep_df.sort_values("claude_share")
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    share = 100 * df["claude_share"]
    ax.plot(share, df["quality_ratio"], lw=1.5, label="quality ratio")
    ax.axhline(target_ratio, ls="--", c="grey", label=f"target {target_ratio:.0%}")
    ax.plot(100 * chosen["claude_share"], chosen["quality_ratio"], "o", c="red", label="chosen")
    # "\\$": a bare pair of $ would switch matplotlib to mathtext.
    ax.annotate(f"t={chosen['threshold']:.3g}\n\\${chosen['cost_per_1k']:.2f}/1k "
                f"(saves \\${chosen['savings_per_1k']:.2f})",
                (100 * chosen["claude_share"], chosen["quality_ratio"]),
                xytext=(8, -28), textcoords="offset points", fontsize=8)
    ax.set_xlabel("Claude call share (%)")
    ax.set_ylabel("blended / Claude quality")
    ax.set_title(title)
    cost_ax = ax.twinx()
    cost_ax.plot(share, df["cost_per_1k"], c="tab:green", lw=1, alpha=0.6)
    cost_ax.set_ylabel("USD per 1k requests", color="tab:green")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pgr(curve: pd.DataFrame, path: str | Path, title: str) -> Path:
    """PNG: PGR vs Claude call share with the random-router diagonal and the APGR in the legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.plot(100 * curve["claude_share"], curve["pgr"], label=f"router (APGR {apgr(curve):.3f})")
    ax.plot([0, 100], [0, 1], ls="--", c="grey", label="random (APGR 0.5)")
    ax.set_xlabel("Claude call share (%)")
    ax.set_ylabel("PGR")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
