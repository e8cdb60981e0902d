"""The FSD gate's evidence: partial Spearman given the number of members, and its decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from scipy.stats import t as t_dist

from spaces.gate_evidence import fsd_gate_evidence, partial_spearman

WITHIN = (0, 1, 2, 3)  # four mixtures of each size


def grid(acc_of) -> tuple[list[float], list[int], list[float]]:
    """Mixtures of 2..7 members, FSD growing with k and, within each k, with x in WITHIN.

    FSD groups never overlap (within-k spread 0.0015 < the 0.003 step), like the issue's
    real adapters whose pairwise FSDs all lie in 0.27..0.29. ``acc_of(k, x)`` gives accuracy.
    """
    fsd, k, acc = [], [], []
    for members in range(2, 8):
        for x in WITHIN:
            fsd.append(0.27 + 0.003 * (members - 2) + 0.0005 * x)
            k.append(members)
            acc.append(acc_of(members, x))
    return fsd, k, acc


# --- partial Spearman against scipy ----------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_partial_spearman_matches_a_regression_on_size_indicators(seed):
    rng = np.random.default_rng(seed)
    n = 40
    k = rng.integers(2, 8, size=n)
    fsd = 0.27 + 0.002 * k + rng.normal(0, 0.003, n)
    acc = 0.85 - 0.01 * k - 2.0 * fsd + rng.normal(0, 0.01, n)
    rho, p = partial_spearman(fsd, acc, k)

    # 1. The pooled within-size correlation, by hand: ranks over all, minus each size's mean.
    rx, ry = rankdata(fsd), rankdata(acc)
    within = [np.concatenate([r[k == size] - r[k == size].mean() for size in np.unique(k)]) for r in (rx, ry)]
    assert rho == pytest.approx(pearsonr(*within)[0], abs=1e-10)
    # 2. Frisch-Waugh: the t statistic of rank(fsd) in an OLS of rank(acc) on rank(fsd) and
    # one indicator per size has df = n - 1 - sizes and gives the same two-sided p-value.
    sizes = np.unique(k)
    design = np.column_stack([rx] + [(k == size).astype(float) for size in sizes])
    coef, *_ = np.linalg.lstsq(design, ry, rcond=None)
    resid = ry - design @ coef
    df = n - design.shape[1]
    cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / df
    t_stat = coef[0] / math.sqrt(cov[0, 0])
    assert df == n - 1 - len(sizes)
    assert t_stat == pytest.approx(rho * math.sqrt(df / (1 - rho**2)), rel=1e-8)
    assert p == pytest.approx(2 * t_dist.sf(abs(t_stat), df), rel=1e-8)


def test_a_size_effect_of_any_shape_is_controlled_for():
    # Accuracy peaks at 4 members and FSD is lowest there (neither is monotonic in k): the
    # size effect alone makes low-FSD sizes the accurate ones. Within each size, accuracy's
    # order (1, 3, 0, 2) is uncorrelated with FSD's (0, 1, 2, 3): FSD predicts nothing there.
    place = {4: 0, 3: 1, 5: 2, 2: 3, 6: 4, 7: 5}  # each size's place in FSD and (reversed) accuracy
    order = {0: 1, 1: 3, 2: 0, 3: 2}
    fsd, k, acc = [], [], []
    for members in range(2, 8):
        for x in WITHIN:
            fsd.append(0.27 + 0.003 * place[members] + 0.0005 * x)
            k.append(members)
            acc.append(0.80 - 0.01 * place[members] + 0.002 * order[x])
    # A linear control on the rank of k leaves the U shape behind as a strong "signal".
    rk = rankdata(k)
    linear = [rankdata(v) - np.polyval(np.polyfit(rk, rankdata(v), 1), rk) for v in (fsd, acc)]
    assert pearsonr(*linear)[0] < -0.8

    rho, p = partial_spearman(fsd, acc, k)
    assert rho == pytest.approx(0.0, abs=1e-12)
    assert p == pytest.approx(1.0)
    evidence = fsd_gate_evidence(fsd, k, acc)
    assert evidence.decision == "no_signal"
    assert evidence.threshold is None


def test_a_size_seen_once_adds_nothing():
    rng = np.random.default_rng(3)
    fsd, acc = rng.random(12), rng.random(12)
    k = [2] * 6 + [3] * 6
    rho, p = partial_spearman(fsd, acc, k)
    # Above every other value, so the other ranks do not move; it brings one mixture and one
    # size, so df = n - 1 - sizes stays 9.
    rho1, p1 = partial_spearman(np.append(fsd, 1.5), np.append(acc, 1.5), k + [4])
    assert rho1 == pytest.approx(rho, abs=1e-12)  # the lone size-4 mixture has no within-size rank
    t_stat = rho * math.sqrt(9 / (1 - rho**2))
    assert p1 == pytest.approx(2 * t_dist.sf(abs(t_stat), 9), rel=1e-8)
    assert p1 == pytest.approx(p, rel=1e-12)


def test_constant_k_gives_plain_spearman():
    rng = np.random.default_rng(1)
    fsd, acc = rng.random(15), rng.random(15)
    rho, p = partial_spearman(fsd, acc, [3] * 15)
    expected = spearmanr(fsd, acc)
    assert rho == pytest.approx(expected[0], abs=1e-12)
    assert p == pytest.approx(expected[1], rel=1e-8)


def test_partial_spearman_is_undefined_when_fsd_is_a_function_of_k():
    rho, p = partial_spearman([0.1, 0.1, 0.2, 0.2, 0.3, 0.3], [0.7, 0.8, 0.6, 0.9, 0.5, 0.4], [2, 2, 3, 3, 4, 4])
    assert math.isnan(rho) and math.isnan(p)


# --- the gate's decisions --------------------------------------------------------------

def test_accuracy_that_depends_only_on_k_gives_no_signal():
    # Accuracy falls with k; within each k its order is (1, 3, 0, 2) against FSD's (0, 1, 2, 3),
    # which are uncorrelated. Raw FSD-accuracy Spearman is strongly negative (the confound).
    order = {0: 1, 1: 3, 2: 0, 3: 2}
    fsd, k, acc = grid(lambda members, x: 0.85 - 0.02 * (members - 2) + 0.002 * order[x])
    assert spearmanr(fsd, acc)[0] < -0.9

    evidence = fsd_gate_evidence(fsd, k, acc)
    assert evidence.decision == "no_signal"
    assert evidence.threshold is None
    assert evidence.rho == pytest.approx(0.0, abs=1e-12)
    assert evidence.p_value == pytest.approx(1.0)
    assert evidence.n == 24
    assert evidence.reason == ("FSD does not predict accuracy on these adapters "
                               "(partial Spearman +0.00, p 1.00, n 24): nothing is filtered")


def falls_with_fsd(members: int, x: int) -> float:
    """Accuracy that falls 0.01 per member and, within each k, 0.004 per step of FSD."""
    return 0.78 - 0.01 * (members - 2) - 0.004 * x


def test_accuracy_that_falls_with_fsd_within_each_k_gives_filter():
    fsd, k, acc = grid(falls_with_fsd)
    evidence = fsd_gate_evidence(fsd, k, acc, tolerance=0.01)
    assert evidence.decision == "filter"
    assert evidence.rho < -0.5 and evidence.p_value < 0.05
    # Best: k=2, x=0 (0.78, FSD 0.270). Within 0.01: k=2 x=0..2 (FSD up to 0.271) and
    # k=3 x=0 (0.77, FSD 0.273), so the threshold is 0.273.
    assert evidence.threshold == pytest.approx(0.273)
    fsd, acc = np.array(fsd), np.array(acc)
    near_best = acc >= acc.max() - 0.01 - 1e-12
    assert np.all(fsd[near_best] <= evidence.threshold)
    assert np.any(fsd > evidence.threshold)  # the gate does filter something it has seen
    assert evidence.reason.startswith("FSD predicts accuracy here (partial Spearman -")
    assert evidence.reason.endswith("n 24): proposals with FSD above 0.273 are filtered")


def test_threshold_never_falls_below_the_best_mixtures_fsd():
    fsd, k, acc = grid(falls_with_fsd)
    evidence = fsd_gate_evidence(fsd, k, acc, tolerance=0.0)
    assert evidence.decision == "filter"
    assert evidence.threshold == pytest.approx(0.270)  # the best mixture's own FSD
    best = int(np.argmax(acc))
    assert fsd[best] <= evidence.threshold


def test_threshold_keeps_near_best_mixtures_on_noisy_data():
    rng = np.random.default_rng(4)
    n = 60
    k = rng.integers(2, 8, size=n)
    fsd = 0.27 + 0.002 * k + rng.uniform(0, 0.004, n)
    acc = 0.9 - 8.0 * (fsd - 0.002 * k) + rng.normal(0, 0.005, n)
    for tolerance in (0.0, 0.005, 0.02):
        evidence = fsd_gate_evidence(fsd, k, acc, tolerance=tolerance)
        assert evidence.decision == "filter"
        near_best = acc >= acc.max() - tolerance
        assert fsd[near_best].max() == evidence.threshold


def test_positive_correlation_never_filters():
    fsd, k, acc = grid(lambda members, x: 0.78 - 0.01 * (members - 2) + 0.004 * x)
    evidence = fsd_gate_evidence(fsd, k, acc)
    assert evidence.rho > 0.5 and evidence.p_value < 0.05
    assert evidence.decision == "no_signal"
    assert evidence.threshold is None
    assert evidence.reason.startswith("Higher FSD goes with higher accuracy on these adapters (partial Spearman +")


def test_constant_k_reports_plain_spearman():
    fsd = [0.270 + 0.001 * i for i in range(10)]
    acc = [0.85 - 0.01 * i for i in range(10)]
    evidence = fsd_gate_evidence(fsd, [4] * 10, acc)
    assert evidence.decision == "filter"
    assert evidence.rho == pytest.approx(-1.0)
    assert evidence.threshold == pytest.approx(0.271)  # 0.85 and 0.84 are within 0.01
    assert "(Spearman -1.00, p < 0.001, n 10)" in evidence.reason


def test_too_few_mixtures_never_filter():
    fsd, k, acc = grid(falls_with_fsd)
    evidence = fsd_gate_evidence(fsd[:7], k[:7], acc[:7], min_n=8)
    assert evidence.decision == "too_few"
    assert evidence.threshold is None
    assert evidence.n == 7
    assert evidence.reason == ("Too few mixtures evaluated to tell whether FSD predicts accuracy "
                               "(n 7, need 8): nothing is filtered")
    assert fsd_gate_evidence([], [], []).decision == "too_few"


def test_fsd_that_only_tracks_k_gives_no_signal():
    evidence = fsd_gate_evidence([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4], [2, 2, 3, 3, 4, 4, 5, 5],
                                 [0.9, 0.7, 0.8, 0.6, 0.5, 0.7, 0.4, 0.6])
    assert evidence.decision == "no_signal"
    assert math.isnan(evidence.rho)
    assert "once the number of members is accounted for" in evidence.reason


# --- invalid input ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(fsd=[0.1, float("nan"), 0.3], k=[2, 3, 4], accuracy=[0.8, 0.7, 0.6]), r"fsd\[1\] is nan"),
    (dict(fsd=[0.1, 0.2, 0.3], k=[2, 3, 4], accuracy=[0.8, 0.7, float("inf")]), r"accuracy\[2\] is inf"),
    (dict(fsd=[0.1, 0.2, 0.3], k=[2, float("-inf"), 4], accuracy=[0.8, 0.7, 0.6]), r"k\[1\] is -inf"),
    (dict(fsd=[0.1, 0.2, 0.3], k=[2, 3], accuracy=[0.8, 0.7, 0.6]), r"fsd has 3, k has 2, accuracy has 3"),
    (dict(fsd=[0.1, 0.2], k=[2, 2.5], accuracy=[0.8, 0.7]), r"k\[1\] is 2.5.*integer >= 1"),
    (dict(fsd=[0.1, 0.2], k=[0, 2], accuracy=[0.8, 0.7]), r"k\[0\] is 0.0"),
    (dict(fsd=[[0.1, 0.2]], k=[2], accuracy=[0.8]), r"fsd must be a 1-D.*shape \(1, 2\)"),
    (dict(fsd=["a"], k=[2], accuracy=[0.8]), r"fsd must be a 1-D sequence of numbers"),
    (dict(fsd=[0.1], k=[2], accuracy=[0.8], alpha=1.5), r"alpha must be in \(0, 1\).*got 1.5"),
    (dict(fsd=[0.1], k=[2], accuracy=[0.8], min_n=3), r"min_n must be an integer >= 4, got 3"),
    (dict(fsd=[0.1], k=[2], accuracy=[0.8], tolerance=-0.1), r"tolerance must be .* >= 0, got -0.1"),
])
def test_invalid_input_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fsd_gate_evidence(**kwargs)
