"""Paired bootstrap intervals and McNemar's exact test against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from trainables.significance import (
    Difference,
    examples_for,
    half_width_for,
    mcnemar_exact,
    paired_bootstrap,
    paired_difference,
)


def paired(b01: int, b10: int, both_right: int = 0, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of a and b with the given counts of each (a, b) outcome, in a fixed shuffled order."""
    a = [False] * b01 + [True] * b10 + [True] * both_right + [False] * both_wrong
    b = [True] * b01 + [False] * b10 + [True] * both_right + [False] * both_wrong
    order = np.random.default_rng(7).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


# --- McNemar ---------------------------------------------------------------------------

@pytest.mark.parametrize("b01, b10, p", [
    (1, 6, 0.125),              # 2 * (1 + 7) / 2**7
    (6, 1, 0.125),              # symmetric
    (0, 5, 0.0625),             # 2 * 1 / 2**5
    (2, 8, 112 / 1024),         # 2 * (1 + 10 + 45) / 2**10
    (3, 3, 1.0),                # 2 * P(X <= 3), X ~ Bin(6, .5) = 2 * 42/64 > 1 -> capped
    (0, 1, 1.0),                # 2 * 1/2
])
def test_mcnemar_matches_hand_computed_p(b01, b10, p):
    a, b = paired(b01, b10, both_right=40, both_wrong=9)
    result = mcnemar_exact(a, b)
    assert (result.b01, result.b10) == (b01, b10)
    assert result.n_discordant == b01 + b10
    assert result.p_value == pytest.approx(p, abs=1e-12)
    assert result.p_value == pytest.approx(binomtest(b01, b01 + b10, 0.5).pvalue, abs=1e-12)


def test_mcnemar_without_discordant_pairs_is_one():
    a, b = paired(0, 0, both_right=30, both_wrong=5)
    assert mcnemar_exact(a, b).p_value == 1.0


def test_mcnemar_on_many_examples_matches_scipy():
    a, b = paired(180, 240, both_right=3000, both_wrong=500)
    result = mcnemar_exact(a, b)
    assert result.p_value == pytest.approx(binomtest(180, 420, 0.5).pvalue, rel=1e-9)
    assert result.p_value < 0.01


# --- bootstrap intervals ---------------------------------------------------------------

def test_bootstrap_interval_width_matches_the_normal_approximation():
    # 400 examples at accuracy 0.8: 1.96 * sqrt(0.8 * 0.2 / 400) = 0.0392 either side.
    correct = np.array([True] * 320 + [False] * 80)
    interval = paired_bootstrap({"m": correct}, n_resamples=4000, seed=1)["m"]
    assert interval.accuracy == 0.8
    assert interval.n == 400
    assert interval.low == pytest.approx(0.8 - 0.0392, abs=0.006)
    assert interval.high == pytest.approx(0.8 + 0.0392, abs=0.006)
    assert half_width_for(400, 0.8) == pytest.approx(0.0392, abs=5e-5)


def test_bootstrap_is_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    correct = {"mix": rng.random(150) < 0.7, "own": rng.random(150) < 0.6}
    first = paired_bootstrap(correct, n_resamples=500, seed=3)
    assert paired_bootstrap(correct, n_resamples=500, seed=3) == first
    other = paired_bootstrap(correct, n_resamples=500, seed=4)
    assert (other["mix"].low, other["mix"].high) != (first["mix"].low, first["mix"].high)


def test_bootstrap_is_paired_identical_candidates_get_identical_intervals():
    rng = np.random.default_rng(2)
    mix = rng.random(120) < 0.75
    intervals = paired_bootstrap({"mix": mix, "copy": mix.copy(), "own": rng.random(120) < 0.5}, seed=5)
    assert intervals["mix"] == intervals["copy"]
    # A candidate's interval does not depend on which other candidates are compared.
    assert paired_bootstrap({"mix": mix}, seed=5)["mix"] == intervals["mix"]


@pytest.mark.parametrize("seed", range(20))
def test_interval_covers_the_observed_accuracy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    correct = rng.random(n) < rng.random()
    for interval in paired_bootstrap({"m": correct}, n_resamples=int(rng.integers(1, 50)), seed=seed).values():
        assert interval.low <= interval.accuracy <= interval.high
        assert interval.contains(interval.accuracy)
        assert 0.0 <= interval.low and interval.high <= 1.0


def test_accepts_lists_and_tensors_of_zero_one():
    as_list = [1, 0, 1, 1, 0, 1, 1, 1]
    intervals = paired_bootstrap({"list": as_list, "tensor": torch.tensor(as_list, dtype=torch.bool)},
                                 n_resamples=200)
    assert intervals["list"] == intervals["tensor"]
    assert intervals["list"].accuracy == 0.75


# --- paired difference -----------------------------------------------------------------

def test_difference_of_a_candidate_with_itself_is_exactly_zero():
    correct = np.random.default_rng(3).random(200) < 0.6
    assert paired_difference(correct, correct.copy()) == Difference(lead=0.0, low=0.0, high=0.0, n=200)


def test_difference_interval_matches_hand_computed_width():
    # 400 examples, a wins 30 discordant pairs and loses 10: lead 0.05; per-resample variance
    # of the lead is ((30 + 10) / 400 - 0.05**2) / 400, so 1.96 * sd = 0.0306.
    a, b = paired(10, 30, both_right=300, both_wrong=60)
    diff = paired_difference(a, b, n_resamples=4000, seed=2)
    assert diff.lead == pytest.approx(0.05)
    half = 1.96 * math.sqrt((40 / 400 - 0.05**2) / 400)
    assert diff.low == pytest.approx(0.05 - half, abs=0.006)
    assert diff.high == pytest.approx(0.05 + half, abs=0.006)
    assert not diff.includes_zero


def test_difference_ignores_examples_both_get_right_or_wrong():
    # Pairing: moving agreed examples from both-right to both-wrong changes both accuracies
    # but not one resample of their difference.
    a1, b1 = paired(4, 6, both_right=80, both_wrong=10)
    a2, b2 = paired(4, 6, both_right=10, both_wrong=80)
    assert paired_difference(a1, b1, seed=9) == paired_difference(a2, b2, seed=9)


def test_small_lead_lies_inside_the_interval():
    a, b = paired(4, 7, both_right=70, both_wrong=19)  # 0.77 vs 0.74 on 100 examples
    diff = paired_difference(a, b)
    assert diff.lead == pytest.approx(0.03)
    assert diff.includes_zero


# --- half-width ------------------------------------------------------------------------

@pytest.mark.parametrize("n, accuracy, confidence, expected", [
    (100, 0.5, 0.95, 0.0980),    # 1.96 * 0.05
    (100, 0.8, 0.95, 0.0784),    # the "about ±8 points"
    (2500, 0.5, 0.95, 0.0196),
    (100, 0.5, 0.90, 0.0822),    # 1.645 * 0.05
    (10, 1.0, 0.95, 0.0),
])
def test_half_width_for(n, accuracy, confidence, expected):
    assert half_width_for(n, accuracy, confidence) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("half_width, accuracy, confidence", [
    (0.098, 0.5, 0.95), (0.05, 0.5, 0.95), (0.0196, 0.5, 0.95), (0.03, 0.8, 0.90), (0.2, 0.5, 0.99), (0.7, 0.5, 0.95),
])
def test_examples_for_is_the_fewest_examples_that_reach_the_half_width(half_width, accuracy, confidence):
    n = examples_for(half_width, accuracy, confidence)
    assert half_width_for(n, accuracy, confidence) <= half_width
    assert n == 1 or half_width_for(n - 1, accuracy, confidence) > half_width
    # What a scan finds: the first n from 1 up.
    assert n == next(m for m in range(1, 10**5) if half_width_for(m, accuracy, confidence) <= half_width)


# --- invalid input ---------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: paired_bootstrap({"a": [1, 0, 1], "b": [1, 0]}), r"same examples: 'a' has 3 but 'b' has 2"),
    (lambda: paired_bootstrap({}), "correct is empty"),
    (lambda: paired_bootstrap({"a": []}), r"correct\['a'\] is empty"),
    (lambda: paired_bootstrap({"a": [1, 0, 2]}), r"correct\['a'\] must hold only True/False.*2 at position 2"),
    (lambda: paired_bootstrap({"a": [1.0, float("nan")]}), r"nan at position 1"),
    (lambda: paired_bootstrap({"a": [[1, 0]]}), r"1-D.*shape \(1, 2\)"),
    (lambda: paired_bootstrap({"a": [1, 0]}, confidence=1.0), r"confidence must be in \(0, 1\).*got 1.0"),
    (lambda: paired_bootstrap({"a": [1, 0]}, confidence=0), r"confidence must be in \(0, 1\).*got 0"),
    (lambda: paired_bootstrap({"a": [1, 0]}, confidence=95), r"got 95"),
    (lambda: paired_bootstrap({"a": [1, 0]}, n_resamples=0), r"n_resamples must be an integer >= 1, got 0"),
    (lambda: paired_bootstrap({"a": [1, 0]}, seed=-1), r"seed must be an integer >= 0, got -1"),
    (lambda: paired_difference([1, 0, 1], [1, 0]), r"'a' has 3 but 'b' has 2"),
    (lambda: paired_difference([], []), r"a is empty"),
    (lambda: paired_difference([1, 0], [1, 1], confidence=-0.5), r"got -0.5"),
    (lambda: mcnemar_exact([1, 0, 1], [1, 0]), r"'a_correct' has 3 but 'b_correct' has 2"),
    (lambda: mcnemar_exact(["yes"], ["no"]), r"a_correct must hold True/False"),
    (lambda: half_width_for(0), r"n must be an integer >= 1.*got 0"),
    (lambda: half_width_for(100, accuracy=1.5), r"accuracy must be in \[0, 1\], got 1.5"),
    (lambda: half_width_for(100, confidence=1.2), r"got 1.2"),
])
def test_invalid_input_names_the_bad_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# mean_difference: the lead in accuracy averaged over targets ----------------------------------

def test_the_mean_lead_weighs_each_target_once_not_by_its_size():
    from trainables.significance import mean_difference

    # Target "big" (100 examples): a leads by 0.05. Target "small" (10 examples): b leads by 0.3.
    a = {"big": [1] * 55 + [0] * 45, "small": [1] * 2 + [0] * 8}
    b = {"big": [1] * 50 + [0] * 50, "small": [1] * 5 + [0] * 5}
    d = mean_difference(a, b, seed=0)
    assert d.lead == pytest.approx((0.05 - 0.3) / 2) and d.n == 110
    assert d.low <= d.lead <= d.high
    pooled = (57 - 55) / 110  # what pooling the examples would say: a ahead
    assert pooled > 0 > d.lead


def test_the_mean_lead_of_one_target_is_the_paired_difference_and_of_equals_zero():
    from trainables.significance import mean_difference, paired_difference

    a, b = [1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 0, 0, 1]
    assert mean_difference({"t": a}, {"t": b}, seed=3) == paired_difference(a, b, seed=3)
    same = mean_difference({"t": a, "u": b}, {"t": a, "u": b})
    assert (same.lead, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same targets"):
        mean_difference({"t": a}, {"u": a})
