import math

import numpy as np
import pandas as pd
import pytest

from qeforge.evaluation.routing import (
    Prices, apgr, apply_threshold, cpt, pgr_curve, plot_pgr, plot_quality_cost, select_threshold,
    signal_auroc, sweep,
)
from qeforge.evaluation.stats import auroc, bootstrap_ci, mean_ci, ratio_ci


def test_select_threshold_known_answer():
    # Confidence 1.0, 0.9, ..., 0.1 (given shuffled). Claude scores 10 everywhere: mean 10, total 100.
    # Local scores in descending-confidence order: 10 10 10 10 10 5 | 5 0 0 0.
    # Top k local, rest Claude -> blended total = sum(local[:k]) + 10 * (10 - k):
    #   k=6: 55 + 40 = 95 -> ratio 0.95 (exactly on target, allowed)
    #   k=7: 60 + 30 = 90 -> 0.90;  k=8: 80;  k=9: 70;  k=10: 60   (all fail)
    # So t = 0.5 (6th highest confidence), local share 0.6, blended 9.5.
    conf_desc = np.round(np.arange(10, 0, -1) / 10, 1)
    local_desc = np.array([10, 10, 10, 10, 10, 5, 5, 0, 0, 0], dtype=float)
    perm = np.random.default_rng(3).permutation(10)
    df = sweep(conf_desc[perm], local_desc[perm], np.full(10, 10.0))
    row = select_threshold(df, 0.95)
    assert row["threshold"] == 0.5
    assert row["local_share"] == 0.6
    assert row["blended_quality"] == 9.5
    assert row["quality_ratio"] == pytest.approx(0.95)
    # A stricter target moves to k=5: 50 + 50 = 100 -> ratio 1.0, t = 0.6.
    assert select_threshold(df, 0.96)["threshold"] == 0.6


def test_all_claude_row_and_ties():
    conf = [0.8, 0.5, 0.2, 0.5]
    local = [1.0, 0.0, 0.0, 1.0]
    claude = [1.0, 1.0, 1.0, 1.0]
    df = sweep(conf, local, claude)
    assert df["threshold"].tolist() == [0.2, 0.5, 0.8, math.inf]
    # Ties: t = 0.5 keeps both 0.5 examples local (3 of 4); t = 0.8 keeps one.
    assert df["local_share"].tolist() == [1.0, 0.75, 0.25, 0.0]
    assert (df["claude_share"] == 1 - df["local_share"]).all()
    # t=0.5: local 1 + 0 + 1, Claude 1 -> 3/4.
    assert df["blended_quality"].tolist() == [0.5, 0.75, 1.0, 1.0]
    last = df.iloc[-1]
    assert last["quality_ratio"] == 1.0 and last["savings_per_1k"] == 0.0
    # Ratios by row: 0.5, 0.75, 1.0, 1.0; at target 1.0 the largest local share is t = 0.8 (0.25).
    assert select_threshold(df, 1.0)["threshold"] == 0.8
    # If no local answer is good enough, the +inf row (all Claude) is the answer.
    assert select_threshold(sweep(conf, [0.0] * 4, claude), 0.95)["threshold"] == math.inf


def test_select_threshold_tie_breaks():
    df = pd.DataFrame({"threshold": [0.1, 0.2, 0.3, math.inf], "local_share": [0.5, 0.5, 0.5, 0.0],
                       "blended_quality": [9.0, 9.5, 9.5, 10.0], "quality_ratio": [0.9, 0.95, 0.95, 1.0]})
    # Same share -> higher quality (0.2, 0.3) -> higher threshold (0.3).
    assert select_threshold(df, 0.9)["threshold"] == 0.3


def test_cost_arithmetic():
    # 1000 in + 500 out at $3/$15 per Mtok = 0.003 + 0.0075 = $0.0105 per request = $10.50 per 1k.
    prices = Prices(local_per_hour=3.6)  # 3.6 USD/h over 3600 req/h = $0.001 per request = $1 per 1k
    assert Prices().claude_cost(1000, 500) == pytest.approx(0.0105)
    assert prices.local_cost(1000) == pytest.approx(1.0)
    df = sweep([0.9, 0.1], [1, 1], [1, 1], input_tokens=[1000, 1000], output_tokens=[500, 500], prices=prices)
    # Rows: t=0.1 all local ($1), t=0.9 half ((10.5 + 1) / 2 = 5.75), +inf all Claude (10.5).
    assert df["cost_per_1k"].tolist() == pytest.approx([1.0, 5.75, 10.5])
    assert df["savings_per_1k"].tolist() == pytest.approx([9.5, 4.75, 0.0])
    # Without token counts Claude costs nothing and default local cost is 0.
    assert (sweep([0.9, 0.1], [1, 1], [1, 1])["cost_per_1k"] == 0).all()


def test_apply_threshold():
    conf = np.array([0.9, 0.8, 0.3, 0.1])
    out = apply_threshold(0.5, conf, [8, 8, 0, 0], [8, 8, 8, 8], input_tokens=[1000] * 4,
                          output_tokens=[500] * 4)
    # Top two local (8, 8), bottom two Claude (8, 8): ratio 1.0; two Claude calls: 10.5 * 0.5 = 5.25 per 1k.
    assert out["local_share"] == 0.5 and out["quality_ratio"] == 1.0
    assert out["quality_ratio_low"] == out["quality_ratio_high"] == 1.0  # every resample has ratio 1
    assert out["cost_per_1k"] == pytest.approx(5.25) and out["savings_per_1k"] == pytest.approx(5.25)
    rng = np.random.default_rng(0)
    claude = rng.uniform(5, 10, 300)
    local = claude - rng.uniform(0, 3, 300)
    out = apply_threshold(0.5, rng.uniform(size=300), local, claude)
    assert out["quality_ratio_low"] <= out["quality_ratio"] <= out["quality_ratio_high"] < 1


def test_pgr_cpt_apgr_hand_computed():
    # Confidence descending 0.9 0.7 0.5 0.3; local 8 6 2 0; Claude 8 everywhere.
    # weak (all local) = 16/4 = 4, strong (all Claude) = 8, gap 4. Escalating lowest confidence first:
    #   share 0    : (8+6+2+0)/4 = 4   -> PGR 0
    #   share 0.25 : (8+6+2+8)/4 = 6   -> PGR 0.5
    #   share 0.5  : (8+6+8+8)/4 = 7.5 -> PGR 0.875
    #   share 0.75 : (8+8+8+8)/4 = 8   -> PGR 1
    #   share 1    :                 8 -> PGR 1
    curve = pgr_curve([0.5, 0.9, 0.3, 0.7], [2, 8, 0, 6], [8, 8, 8, 8])
    assert curve["claude_share"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert curve["pgr"].tolist() == [0, 0.5, 0.875, 1, 1]
    assert cpt(curve, 0.5) == 0.25
    assert cpt(curve, 0.8) == 0.5
    assert cpt(curve, 0.95) == 0.75
    # Trapezoid, width 0.25: 0.25 * ((0+.5)/2 + (.5+.875)/2 + (.875+1)/2 + (1+1)/2)
    #                      = 0.25 * (0.25 + 0.6875 + 0.9375 + 1) = 0.25 * 2.875 = 0.71875
    assert apgr(curve) == 0.71875


def test_pgr_undefined_when_local_matches_claude():
    curve = pgr_curve([0.1, 0.2, 0.3], [5, 6, 7], [5, 6, 7])
    assert curve["pgr"].isna().all()
    assert cpt(curve, 0.8) == 0.0
    assert math.isnan(apgr(curve))


def _naive_sweep(conf, local, claude, cost, local_cost):
    rows = []
    for t in list(np.unique(conf)) + [math.inf]:
        is_local = conf >= t
        blended = np.where(is_local, local, claude).mean()
        c = np.where(is_local, local_cost, cost).mean()
        rows.append([t, is_local.mean(), blended, blended / claude.mean(), 1000 * c, 1000 * (cost.mean() - c)])
    return np.array(rows)


def test_sweep_matches_naive_loop_and_scales():
    rng = np.random.default_rng(1)
    n = 200
    conf = np.round(rng.uniform(size=n), 1)  # heavy ties
    claude = rng.uniform(0, 10, n)
    local = np.clip(claude + rng.normal(-1, 2, n), 0, 10)
    tin, tout = rng.integers(100, 5000, n), rng.integers(50, 2000, n)
    prices = Prices(local_per_hour=2.0, local_requests_per_hour=1000)
    df = sweep(conf, local, claude, input_tokens=tin, output_tokens=tout, prices=prices)
    expected = _naive_sweep(conf, local, claude, prices.claude_cost(tin, tout), prices.local_cost())
    cols = ["threshold", "local_share", "blended_quality", "quality_ratio", "cost_per_1k", "savings_per_1k"]
    np.testing.assert_allclose(df[cols].to_numpy(), expected, rtol=1e-12, atol=1e-12)

    big = sweep(rng.uniform(size=10_000), rng.uniform(size=10_000), rng.uniform(size=10_000))
    assert len(big) == 10_001
    assert big["threshold"].is_monotonic_increasing and big["local_share"].is_monotonic_decreasing


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, 1000)
    point, low, high = mean_ci(x[:50], seed=1)
    assert low < point < high and point == pytest.approx(x[:50].mean())
    assert mean_ci(x[:50], seed=1) == (point, low, high)
    _, big_low, big_high = mean_ci(x, seed=1)
    assert big_high - big_low < (high - low) / 2  # 20x the data: ~1/sqrt(20) the width
    # A plain python statistic gives the same interval as the vectorized one on the same draws.
    assert bootstrap_ci(np.mean, x[:50], seed=1) == pytest.approx((point, low, high))
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([3.0]) == (3.0, 3.0, 3.0)


def test_ratio_ci_is_paired():
    den = np.random.default_rng(0).uniform(1, 100, 200)  # widely varying difficulty
    # Paired resampling keeps num_i = 1.1 * den_i together, so every resample has ratio 1.1;
    # independent resampling of num and den would give a wide interval.
    point, low, high = ratio_ci(1.1 * den, den)
    assert point == pytest.approx(1.1) and low == pytest.approx(1.1) and high == pytest.approx(1.1)
    assert math.isnan(ratio_ci([1.0, 2.0], [0.0, 0.0])[0])


def test_auroc_and_signal_auroc():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    # Good local answers (local >= 0.95 * claude) are exactly the high-confidence ones.
    assert signal_auroc([0.9, 0.8, 0.2, 0.1], [10, 10, 2, 1], [10, 10, 10, 10]) == 1.0
    assert math.isnan(signal_auroc([0.9, 0.1], [10, 10], [10, 10]))


@pytest.mark.slow
def test_plots(tmp_path):
    rng = np.random.default_rng(0)
    conf, claude = rng.uniform(size=100), rng.uniform(5, 10, 100)
    local = claude - rng.uniform(0, 2, 100) * (1 - conf)
    df = sweep(conf, local, claude, input_tokens=np.full(100, 1000), output_tokens=np.full(100, 500))
    row = select_threshold(df, 0.95)
    for path in (plot_quality_cost(df, row["threshold"], 0.95, tmp_path / "a" / "q.png", "test-generation"),
                 plot_pgr(pgr_curve(conf, local, claude), tmp_path / "p.png", "test-generation")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_quality_cost(df, 1234.5, 0.95, tmp_path / "x.png", "t")
