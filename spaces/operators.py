"""The merge operators and head protocols a mixture can use: one registry each.

What an operator *is* for the search (its name, the parameters that change its result, their
ranges, whether it needs the adapters' shared initialisation) lives here, in ``spaces``,
because the spec, the search space and the config validate against it. How it merges is
``trainables.merging``, whose ``MERGE_METHODS`` takes each operator's ``needs_init`` and
``parameters`` from :data:`MERGE_OPERATORS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spaces.errors import SpecError


@dataclass(frozen=True)
class MergeOperator:
    """A merge operator as the search sees it."""

    name: str
    needs_init: bool  # merges deltas from the shared initialisation
    parameters: tuple[str, ...]  # of "density", "drop_rate", "lam", "seed"
    description: str


MERGE_OPERATORS: dict[str, MergeOperator] = {o.name: o for o in (
    MergeOperator("average", False, (), "weighted average of the members' weights (the paper's Eq. 1)"),
    MergeOperator("task_arithmetic", True, ("lam",),
                  "init + lam * weighted mean of the deltas (Ilharco et al. 2023)"),
    MergeOperator("ties", True, ("density", "lam"),
                  "trim each delta to its top density by |value|, elect a sign by weighted mass, "
                  "weighted mean of the agreeing values (Yadav et al. 2023)"),
    MergeOperator("dare_linear", True, ("drop_rate", "lam", "seed"),
                  "drop delta entries with probability drop_rate, rescale by 1/(1-drop_rate), "
                  "weighted mean (Yu et al. 2024)"),
    MergeOperator("dare_ties", True, ("drop_rate", "lam", "seed"),
                  "DARE's drop and rescale, then TIES' sign election and disjoint mean"),
)}
DEFAULT_MERGE_OPERATOR = "average"

HEAD_PROTOCOLS: dict[str, str] = {
    "own": "each target's trained head on the mixed adapter (the paper's protocol)",
    "refit": "a linear head per target refit on the mixed adapter's features of its training split",
}
DEFAULT_HEAD_PROTOCOL = "own"

# Allowed values of the operators' parameters, as (test, the words a message uses).
PARAMETER_RANGES: dict[str, tuple] = {
    "density": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "drop_rate": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "lam": (lambda v: v > 0.0 and math.isfinite(v), "a finite number > 0"),
}
PARAMETER_DEFAULTS: dict[str, float | int] = {"lam": 1.0, "seed": 0}  # density, drop_rate: required


def check_merge_parameter(name: str, value) -> float:
    """Returns ``value`` as a float when it is allowed for parameter ``name``; raises SpecError otherwise."""
    test, allowed = PARAMETER_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(float(value)):
        raise SpecError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_operator(name: str, field: str = "merge_method") -> MergeOperator:
    """Returns the registered operator ``name``; raises SpecError naming the allowed ones."""
    if name not in MERGE_OPERATORS:
        raise SpecError(f"{field} must be one of {list(MERGE_OPERATORS)}, got {name!r}")
    return MERGE_OPERATORS[name]
