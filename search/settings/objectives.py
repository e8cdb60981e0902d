"""What a search maximises, and how one mixture is picked when there are two objectives.

``OBJECTIVES`` and ``PARETO_RULES`` are the registries that ``search.objectives`` and
``search.pareto_rule`` of the config name; nothing else lists them.
"""

from __future__ import annotations

from typing import Callable, Mapping

# Objective (as the config names it) -> the metric a trial reports and MLflow records.
OBJECTIVES: dict[str, str] = {
    "accuracy": "accuracy_mean",
    "robust_accuracy": "robust_accuracy_mean",  # white-box FGSM (search.fgsm_step)
    "bb_robust_accuracy": "bb_robust_accuracy_mean",  # black-box word substitution (search.blackbox_attack)
}

# Pareto rule -> the score it ranks the front of (accuracy, robustness) by, highest first;
# robustness is the metric of the search's robustness objective (:func:`robustness_metric`).
PARETO_RULES: dict[str, Callable[[Mapping[str, float], str], float]] = {
    "balanced": lambda m, robust: (m["accuracy_mean"] + m[robust]) / 2,
    "accuracy": lambda m, robust: m["accuracy_mean"],
    "robust_accuracy": lambda m, robust: m[robust],
}
DEFAULT_ROBUSTNESS = OBJECTIVES["robust_accuracy"]


def robustness_metric(objectives: list[str] | tuple[str, ...]) -> str:
    """The metric the Pareto front weighs against accuracy: the search's robustness objective
    (FGSM's ``robust_accuracy_mean`` when it has none)."""
    robust = [OBJECTIVES[o] for o in objectives if o != "accuracy"]
    return robust[0] if robust else DEFAULT_ROBUSTNESS


def selection_rule(objectives: list[str] | tuple[str, ...], pareto_rule: str) -> str:
    """How the best mixture is chosen: by accuracy alone, or by ``pareto_rule`` from the
    Pareto front when the search has several objectives."""
    return pareto_rule if len(objectives) > 1 else "accuracy"


def pick_from_pareto_front(runs: list, rule: str, robustness: str = DEFAULT_ROBUSTNESS):
    """The run that ``rule`` (one of :data:`PARETO_RULES`) picks from the Pareto front of
    (accuracy, ``robustness``); None when no run has both metrics. Among equals: fewest
    members, then earliest."""
    if rule not in PARETO_RULES:
        raise ValueError(f"rule must be one of {list(PARETO_RULES)}, got {rule!r}")
    score = PARETO_RULES[rule]
    front = sorted(pareto_front(runs, robustness), key=lambda r: (-score(r.data.metrics, robustness),
                                                                  r.data.metrics.get("k", 0), r.info.start_time))
    return front[0] if front else None


def pareto_front(runs: list, robustness: str = DEFAULT_ROBUSTNESS) -> list:
    """The runs no other run beats on both accuracy and ``robustness`` (the Pareto front)."""
    scored = [(r.data.metrics.get("accuracy_mean"), r.data.metrics.get(robustness), r) for r in runs]
    scored = [(a, b, r) for a, b, r in scored if a is not None and b is not None]
    return [r for a, b, r in scored
            if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2, _ in scored)]
