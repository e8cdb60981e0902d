"""Which way `signmix results --sort METRIC` orders a metric."""

from __future__ import annotations

import pytest

from search.reporting.results import lower_is_better


@pytest.mark.parametrize("metric, lower", [
    ("accuracy_mean", False), ("robust_accuracy_mean", False), ("bb_robust_accuracy_mean", False),
    ("bb_robust_accuracy/books", False), ("bb_queries/books", False), ("bb_words_changed/books", False),
    ("bb_attack_success/books", True), ("fsd", True), ("eval_seconds", True)])
def test_attack_success_sorts_lowest_first_and_robust_accuracy_highest_first(metric, lower):
    assert lower_is_better(metric) is lower
