"""The front of a plan search and the plan it chooses; a plan's mean accuracy with an interval.

Selection reads validation only: the chosen plan is the fewest bodies (then the fewest bytes)
whose mean validation accuracy is within ``tolerance`` of the bound (the N own adapters under
the same head protocol, which is the plan with one group per domain) and whose worst domain
loses at most ``max_domain_loss`` against its own adapter (the floor); or, with ``max_bodies``,
the best plan of at most that many bodies, those within the floor first. Test accuracies are
reported for it, never used to choose.

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
    worst_domain: str = ""  # the domain that loses most against its own adapter on validation
    worst_loss: float = 0.0  # its loss (own adapter minus plan; negative: every domain gains)
    bytes: int = 0  # what the plan's bodies and its domains' masks and rescalers weigh (0: not counted)
    serving: tuple[str, ...] = ()  # each group's serving option, in the partition's order

    def within_floor(self, max_domain_loss: float | None) -> bool:
        return max_domain_loss is None or self.worst_loss <= max_domain_loss + 1e-12


def front_points(best: Mapping[int, Partition], accuracy: Mapping[Partition, float],
                 worst: Mapping[Partition, tuple[str, float]] | None = None,
                 sizes: Mapping[Partition, int] | None = None,
                 serving: Mapping[Partition, Sequence[str]] | None = None) -> list[FrontPoint]:
    """One point per number of bodies (fewest first), each marked whether it is on the Pareto
    front of (fewer bodies, higher accuracy); ``worst``, ``sizes`` and ``serving`` give each
    partition's worst domain and its loss, its bytes and its groups' serving options."""
    points, top = [], float("-inf")
    for bodies in sorted(best):
        p = best[bodies]
        acc = float(accuracy[p])
        name, loss = (worst or {}).get(p, ("", 0.0))
        points.append(FrontPoint(bodies=bodies, partition=p, accuracy=acc, pareto=acc > top, worst_domain=name,
                                 worst_loss=float(loss), bytes=int((sizes or {}).get(p, 0)),
                                 serving=tuple((serving or {}).get(p, ()))))
        top = max(top, acc)
    return points


def _worst(p: FrontPoint) -> str:
    return f"worst domain {p.worst_domain} {-100 * p.worst_loss:+.1f} points" if p.worst_domain else ""


def choose_plan(points: Sequence[FrontPoint], *, bound: float, tolerance: float,
                max_bodies: int | None = None, max_domain_loss: float | None = None) -> tuple[FrontPoint, str]:
    """The plan to serve and why, in one sentence.

    Without ``max_bodies``: the fewest bodies, then the fewest bytes, whose accuracy is at least
    ``bound - tolerance`` and whose worst domain loses at most ``max_domain_loss`` (the plan with
    one group per domain always qualifies, when it was scored). With ``max_bodies``: the most
    accurate plan of at most that many bodies among those within the floor (all of them if none
    is), the fewest bodies among equals.

    Raises:
        ValueError: no point qualifies (no plan of at most ``max_bodies`` bodies was scored).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if max_domain_loss is not None and max_domain_loss < 0:
        raise ValueError(f"max_domain_loss must be >= 0 or None, got {max_domain_loss}")
    floor = "" if max_domain_loss is None else f" with no domain more than {100 * max_domain_loss:.1f} points " \
                                               "below its own adapter (plan.max_domain_loss)"
    if max_bodies is not None:
        allowed = [p for p in points if p.bodies <= max_bodies]
        if not allowed:
            raise ValueError(f"no plan of at most {max_bodies} bodies was scored")
        kept = [p for p in allowed if p.within_floor(max_domain_loss)]
        pick = max(kept or allowed, key=lambda p: (p.accuracy, -p.bodies, -p.bytes))
        return pick, (f"the best plan of at most {max_bodies} bodies (plan.max_bodies)"
                      f"{floor if kept else ''}: {pick.bodies} bodies, {pick.accuracy:.4f} against the bound "
                      f"{bound:.4f}" + (f"; {_worst(pick)}" if pick.worst_domain else "")
                      + ("" if kept or max_domain_loss is None else "; none of them keeps every domain within "
                         "the floor"))
    within = [p for p in points if p.accuracy >= bound - tolerance - 1e-12 and p.within_floor(max_domain_loss)]
    if not within:
        pick = max(points, key=lambda p: (p.within_floor(max_domain_loss), p.accuracy, -p.bodies))
        return pick, (f"no plan came within {100 * tolerance:.1f} points of the bound {bound:.4f}{floor}; "
                      f"the most accurate one: {pick.bodies} bodies, {pick.accuracy:.4f}")
    pick = min(within, key=lambda p: (p.bodies, p.bytes, -p.accuracy))
    return pick, (f"the fewest bodies within {100 * tolerance:.1f} points (plan.tolerance) of the bound "
                  f"{bound:.4f}{floor}: {pick.bodies} bodies, {pick.accuracy:.4f}"
                  + (f", {_worst(pick)}" if pick.worst_domain else ""))


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
