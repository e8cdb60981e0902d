"""The front of a plan search and the plan it chooses; a plan's mean accuracy with an interval.

Selection reads validation only: the chosen plan is the fewest bodies whose mean validation
accuracy is within ``tolerance`` of the bound (the N own adapters under the same head
protocol, which is the plan with one group per domain), or, with ``max_bodies``, the best
plan of at most that many bodies. Test accuracies are reported for it, never used to choose.

Only numbers and names in and out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from search.plan.partition import Partition
from trainables.significance import Interval, mean_difference


@dataclass(frozen=True)
class FrontPoint:
    """The best plan found for one number of bodies."""

    bodies: int
    partition: Partition
    accuracy: float  # mean validation accuracy over the domains
    pareto: bool  # no plan with fewer bodies is at least as accurate


def front_points(best: Mapping[int, Partition], accuracy: Mapping[Partition, float]) -> list[FrontPoint]:
    """One point per number of bodies (fewest first), each marked whether it is on the Pareto
    front of (fewer bodies, higher accuracy)."""
    points, top = [], float("-inf")
    for bodies in sorted(best):
        acc = float(accuracy[best[bodies]])
        points.append(FrontPoint(bodies=bodies, partition=best[bodies], accuracy=acc, pareto=acc > top))
        top = max(top, acc)
    return points


def choose_plan(points: Sequence[FrontPoint], *, bound: float, tolerance: float,
                max_bodies: int | None = None) -> tuple[FrontPoint, str]:
    """The plan to serve and why, in one sentence.

    Without ``max_bodies``: the fewest bodies whose accuracy is at least ``bound - tolerance``
    (the plan with one group per domain always is, when it was scored). With ``max_bodies``:
    the most accurate plan of at most that many bodies, the fewest bodies among equals.

    Raises:
        ValueError: no point qualifies (no plan of at most ``max_bodies`` bodies was scored).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if max_bodies is not None:
        allowed = [p for p in points if p.bodies <= max_bodies]
        if not allowed:
            raise ValueError(f"no plan of at most {max_bodies} bodies was scored")
        pick = max(allowed, key=lambda p: (p.accuracy, -p.bodies))
        return pick, (f"the best plan of at most {max_bodies} bodies (plan.max_bodies): {pick.bodies} bodies, "
                      f"{pick.accuracy:.4f} against the bound {bound:.4f}")
    within = [p for p in points if p.accuracy >= bound - tolerance - 1e-12]
    if not within:
        pick = max(points, key=lambda p: (p.accuracy, -p.bodies))
        return pick, (f"no plan came within {100 * tolerance:.1f} points of the bound {bound:.4f}; "
                      f"the most accurate one: {pick.bodies} bodies, {pick.accuracy:.4f}")
    pick = min(within, key=lambda p: (p.bodies, -p.accuracy))
    return pick, (f"the fewest bodies within {100 * tolerance:.1f} points (plan.tolerance) of the bound "
                  f"{bound:.4f}: {pick.bodies} bodies, {pick.accuracy:.4f}")


def mean_accuracy_interval(correct: Mapping[str, Sequence[int]], *, seed: int = 0,
                           confidence: float = 0.95) -> Interval:
    """Mean accuracy over domains (each domain weighs the same) with a bootstrap interval
    stratified by domain, from each domain's per-example correctness (0/1).

    The interval is :func:`trainables.confidence.mean_difference`'s against a candidate that
    gets every example wrong: its lead is exactly the mean accuracy, resampled per domain.
    """
    if not correct:
        raise ValueError("correct is empty; give at least one domain's per-example correctness")
    wrong = {d: [0] * len(v) for d, v in correct.items()}
    diff = mean_difference(dict(correct), wrong, seed=seed, confidence=confidence)
    return Interval(accuracy=diff.lead, low=diff.low, high=diff.high, n=diff.n)
