"""Choosing from the Pareto front of accuracy and robust accuracy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from search.settings.objectives import PARETO_RULES, pareto_front, pick_from_pareto_front


def run(name, acc, rob, k=2, start=0):
    return SimpleNamespace(name=name, data=SimpleNamespace(metrics={"accuracy_mean": acc, "robust_accuracy_mean": rob,
                                                                   "k": k}),
                           info=SimpleNamespace(start_time=start))


RUNS = [run("a", 0.90, 0.40), run("b", 0.85, 0.60), run("c", 0.80, 0.70), run("d", 0.80, 0.55),
        run("e", 0.70, 0.70), run("f", 0.88, 0.30)]


def test_front_keeps_exactly_the_non_dominated_runs():
    # d is beaten by c (same accuracy, more robust), e by c, f by a.
    assert sorted(r.name for r in pareto_front(RUNS)) == ["a", "b", "c"]


# What each registered rule picks from RUNS: a new rule needs its case here.
PICKS = {"robust_accuracy": "c", "balanced": "c", "accuracy": "a"}


@pytest.mark.parametrize("rule", list(PARETO_RULES))
def test_rules_pick_from_the_front(rule):
    assert rule in PICKS, f"give the new Pareto rule {rule!r} a case in PICKS"
    assert pick_from_pareto_front(RUNS, rule).name == PICKS[rule]


def test_balanced_prefers_the_best_mean_and_then_fewer_members():
    runs = [run("x", 0.9, 0.5, k=3), run("y", 0.8, 0.6, k=2), run("z", 0.95, 0.2)]
    # x and y tie on the mean (0.70); y mixes fewer adapters
    assert pick_from_pareto_front(runs, "balanced").name == "y"


def test_runs_without_robust_accuracy_are_not_on_the_front():
    plain = SimpleNamespace(name="p", data=SimpleNamespace(metrics={"accuracy_mean": 0.99}),
                            info=SimpleNamespace(start_time=0))
    assert pick_from_pareto_front([plain], "balanced") is None
    with pytest.raises(ValueError, match=r"rule must be one of \['balanced', 'accuracy', 'robust_accuracy'\], got 'median'"):
        pick_from_pareto_front(RUNS, "median")


def test_the_front_weighs_accuracy_against_the_searchs_robustness_measure():
    from search.settings.objectives import robustness_metric

    assert robustness_metric(["accuracy"]) == "robust_accuracy_mean"
    assert robustness_metric(["accuracy", "bb_robust_accuracy"]) == "bb_robust_accuracy_mean"
    # the black-box measure reverses RUNS' FGSM robustness: a (0.90, 0.60) and f (0.88, 0.70) are the front
    runs = [SimpleNamespace(name=r.name, info=r.info, data=SimpleNamespace(metrics={
        **r.data.metrics, "bb_robust_accuracy_mean": 1.0 - r.data.metrics["robust_accuracy_mean"]})) for r in RUNS]
    assert sorted(r.name for r in pareto_front(runs, "bb_robust_accuracy_mean")) == ["a", "f"]
    assert pick_from_pareto_front(runs, "robust_accuracy", "bb_robust_accuracy_mean").name == "f"
    assert pick_from_pareto_front(runs, "robust_accuracy").name == "c"
