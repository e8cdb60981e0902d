"""Per-domain floors: a plan's worst domain, and which serving option a group uses.

A domain's **loss** is its own adapter's validation accuracy (the bound, same head protocol)
minus its accuracy in the plan; ``plan.max_domain_loss`` is the most any one domain may lose.
A group's serving option (:data:`trainables.serving_options.SERVING_OPTIONS`: the plain body,
per-domain output rescalers, EMR masks and rescalers, TALL masks) is chosen on validation by
:func:`choose_group_option`: an option under which every domain of the group is within its
floor first; among those, the fewest bytes within ``tolerance`` of the best of them on the
group's mean (a 1-bit mask is 1/32 of a float32 adapter, a rescaler 4 bytes). Where no option
keeps every domain within its floor, the one whose worst domain loses least.

Only numbers and names in and out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

from typing import Mapping, Sequence

FLOOR_SLACK = 1e-12  # a loss equal to the floor is within it (rounding of accuracies)


def domain_losses(accuracy: Mapping[str, float], singles: Mapping[str, float]) -> dict[str, float]:
    """Each domain's loss against its own adapter: ``singles[d] - accuracy[d]`` (negative: a gain)."""
    missing = [d for d in accuracy if d not in singles]
    if missing:
        raise ValueError(f"no own-adapter accuracy for {missing}")
    return {d: float(singles[d]) - float(a) for d, a in accuracy.items()}


def worst_domain(accuracy: Mapping[str, float], singles: Mapping[str, float]) -> tuple[str, float]:
    """The domain that loses most against its own adapter, and its loss (ties: the first name)."""
    if not accuracy:
        raise ValueError("accuracy is empty; give at least one domain's accuracy")
    losses = domain_losses(accuracy, singles)
    name = min(sorted(losses), key=lambda d: -losses[d])
    return name, losses[name]


def within_floor(accuracy: Mapping[str, float], singles: Mapping[str, float], max_domain_loss: float | None) -> bool:
    """Whether no domain loses more than ``max_domain_loss`` (None: no floor)."""
    if max_domain_loss is None:
        return True
    return worst_domain(accuracy, singles)[1] <= max_domain_loss + FLOOR_SLACK


def choose_group_option(by_option: Mapping[str, Mapping[str, float]], singles: Mapping[str, float],
                        extra_bytes: Mapping[str, int], *, max_domain_loss: float | None, tolerance: float,
                        order: Sequence[str] | None = None) -> tuple[str, str]:
    """The serving option a group uses, and why in a few words.

    Args:
        by_option: option -> domain -> validation accuracy of the group's domains under it.
        singles: each domain's own-adapter validation accuracy (same head protocol).
        extra_bytes: option -> what it costs beyond the body, over the group's domains.
        max_domain_loss: the floor (None: no floor).
        tolerance: how much group-mean accuracy fewer bytes may cost.
        order: the options' order for a tie (default: ``by_option``'s).

    Raises:
        ValueError: no option, or a negative tolerance.
    """
    if not by_option:
        raise ValueError("by_option is empty; score at least one serving option")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    order = list(order or by_option)
    rank = {o: order.index(o) if o in order else len(order) for o in by_option}
    mean = {o: sum(acc.values()) / len(acc) for o, acc in by_option.items()}
    worst = {o: worst_domain(acc, singles)[1] for o, acc in by_option.items()}
    feasible = [o for o, acc in by_option.items() if within_floor(acc, singles, max_domain_loss)]
    if not feasible:
        pick = min(by_option, key=lambda o: (worst[o], -mean[o], extra_bytes.get(o, 0), rank[o]))
        return pick, f"no option keeps every domain within the floor; {pick} loses least ({100 * worst[pick]:.1f} points)"
    top = max(mean[o] for o in feasible)
    near = [o for o in feasible if mean[o] >= top - tolerance - FLOOR_SLACK]
    pick = min(near, key=lambda o: (extra_bytes.get(o, 0), -mean[o], rank[o]))
    return pick, (f"{pick}: every domain within the floor, the fewest bytes within {100 * tolerance:.1f} points "
                  f"of the best such option")
