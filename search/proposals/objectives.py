"""What a search maximises, and how one mixture is picked when there are two objectives.

``OBJECTIVES`` and ``PARETO_RULES`` are the registries that ``search.objectives`` and
``search.pareto_rule`` of the config name; nothing else lists them.
"""

from __future__ import annotations

from typing import Callable, Mapping

# Objective (as the config names it) -> the metric a trial reports and MLflow records.
OBJECTIVES: dict[str, str] = {
    "accuracy": "accuracy_mean",
    "robust_accuracy": "robust_accuracy_mean",
}

# Pareto rule -> the score it ranks the front of (accuracy, robust accuracy) by, highest first.
PARETO_RULES: dict[str, Callable[[Mapping[str, float]], float]] = {
    "balanced": lambda m: (m["accuracy_mean"] + m["robust_accuracy_mean"]) / 2,
    "accuracy": lambda m: m["accuracy_mean"],
    "robust_accuracy": lambda m: m["robust_accuracy_mean"],
}


def selection_rule(objectives: list[str] | tuple[str, ...], pareto_rule: str) -> str:
    """How the best mixture is chosen: by accuracy alone, or by ``pareto_rule`` from the
    Pareto front when the search has several objectives."""
    return pareto_rule if len(objectives) > 1 else "accuracy"


def pick_from_pareto_front(runs: list, rule: str):
    """The run that ``rule`` (one of :data:`PARETO_RULES`) picks from the Pareto front of
    (accuracy, robust accuracy); None when no run has both metrics. Among equals: fewest
    members, then earliest."""
    if rule not in PARETO_RULES:
        raise ValueError(f"rule must be one of {list(PARETO_RULES)}, got {rule!r}")
    score = PARETO_RULES[rule]
    front = sorted(pareto_front(runs), key=lambda r: (-score(r.data.metrics), r.data.metrics.get("k", 0),
                                                      r.info.start_time))
    return front[0] if front else None


def pareto_front(runs: list) -> list:
    """The runs no other run beats on both accuracy and robust accuracy (the Pareto front)."""
    scored = [(r.data.metrics.get("accuracy_mean"), r.data.metrics.get("robust_accuracy_mean"), r) for r in runs]
    scored = [(a, b, r) for a, b, r in scored if a is not None and b is not None]
    return [r for a, b, r in scored
            if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2, _ in scored)]
