"""Choosing the conflict measure by evidence: the one that predicts accuracy within size, or none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spaces.measure_ranking import choose_measure, evidence_table, measure_evidence, spearman_interval


def _mixtures(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5, size=n)
    conflict = rng.uniform(0, 1, size=n)
    accuracy = 0.9 - 0.05 * k - 0.2 * conflict + rng.normal(0, 0.02, size=n)
    # noise: no relation to accuracy; size_only: the number of members, nothing within size
    return k, accuracy, {"predicts": conflict, "noise": rng.uniform(0, 1, size=n), "size_only": k * 0.1}


def test_the_measure_that_predicts_within_size_is_chosen():
    k, accuracy, values = _mixtures()
    table = evidence_table(values, k, accuracy)
    assert [e.measure for e in table][0] == "predicts"
    chosen, reason = choose_measure(table)
    assert chosen is not None and chosen.measure == "predicts"
    assert chosen.partial < -0.5 and chosen.partial_p < 0.01 and chosen.low < chosen.partial < chosen.high < 0
    assert reason.startswith("predicts predicts accuracy here (partial Spearman -")
    assert "proposals with predicts above" in reason


def test_no_measure_with_evidence_filters_nothing_and_says_which_was_strongest():
    k, accuracy, values = _mixtures()
    chosen, reason = choose_measure(evidence_table({"noise": values["noise"], "size_only": values["size_only"]},
                                                   k, accuracy))
    assert chosen is None
    assert reason.startswith("No measure predicts accuracy on these adapters (strongest: noise")
    assert reason.endswith("nothing is filtered")


def test_a_measure_that_only_tracks_size_has_no_partial_coefficient():
    k, accuracy, values = _mixtures()
    e = measure_evidence("size_only", values["size_only"], k, accuracy)
    assert math.isnan(e.partial) and e.spearman < -0.4 and e.spearman_p < 0.01  # plain Spearman is fooled by size
    assert e.gate.decision == "no_signal"


def test_too_few_mixtures_filter_nothing():
    k, accuracy, values = _mixtures(n=5)
    chosen, reason = choose_measure(evidence_table(values, k, accuracy))
    assert chosen is None and reason.startswith("Too few mixtures evaluated")


@pytest.mark.parametrize("rho, df", [(-0.4, 38), (0.1, 100)])
def test_the_interval_holds_the_coefficient_and_narrows_with_n(rho, df):
    low, high = spearman_interval(rho, df)
    assert low < rho < high
    low2, high2 = spearman_interval(rho, 4 * df)
    assert high2 - low2 < high - low
