"""The merge operators and head protocols a mixture can use: one registry each.

A merge operator is one object (:class:`MergeOperator`): its name, the parameters that change
its result, whether it merges deltas from the adapters' shared initialisation, and the
function that merges one parameter's deltas (:mod:`spaces.merge_maths`). The config's
literals, the CLI's choices, the search's distributions, the spec's validation and the
maths dispatch (:func:`trainables.merging.merge_adapters`) all read :data:`MERGE_OPERATORS`.

A parameter (:class:`OperatorParameter`) is one object too: its name in a
:class:`~spaces.spec.MixtureSpec` and in ``merge_adapters``, the name MLflow and
``mixture.json`` record it under, the config list its values come from, its range and default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from spaces.errors import SpecError
from spaces.merge_maths import dare_linear_delta, dare_ties_delta, task_arithmetic_delta, ties_delta

if TYPE_CHECKING:
    from torch import Tensor

MergeDelta = Callable[["Tensor", "Tensor", str, Mapping], "Tensor"]


@dataclass(frozen=True)
class OperatorParameter:
    """One parameter of the merge operators, with every name it goes by."""

    name: str  # the MixtureSpec field and merge_adapters' keyword
    logged_as: str  # the MLflow parameter and mixture.json key
    config_key: str  # where the config gives its values: a list of search.<key>, or search.seed
    allowed: str  # the words a message uses for its range
    default: float | int | None  # None: required by the operators that take it
    integer: bool = False

    def check(self, value) -> float | int:
        """Returns ``value`` as this parameter's type when it is allowed; raises SpecError otherwise."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{self.name} must be {self.allowed}, got {value!r}")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _IN_RANGE[self.name](float(value)):
            raise SpecError(f"{self.name} must be {self.allowed}, got {value!r}")
        return float(value)

    def read(self, text: str) -> float | int:
        """The value of this parameter as MLflow logged it (a string)."""
        return int(text) if self.integer else float(text)


_IN_RANGE: dict[str, Callable[[float], bool]] = {
    "density": lambda v: 0.0 < v <= 1.0,
    "drop_rate": lambda v: 0.0 <= v < 1.0,
    "lam": lambda v: v > 0.0 and math.isfinite(v),
}

OPERATOR_PARAMETERS: dict[str, OperatorParameter] = {p.name: p for p in (
    OperatorParameter("density", "density", "densities", "in (0, 1]", None),
    OperatorParameter("drop_rate", "drop_rate", "drop_rates", "in [0, 1)", None),
    # "lambda" is a Python keyword: the spec says lam, MLflow and mixture.json keep "lambda".
    OperatorParameter("lam", "lambda", "lambdas", "a finite number > 0", 1.0),
    OperatorParameter("merge_seed", "merge_seed", "seed", "an integer", 0, integer=True),
)}


@dataclass(frozen=True)
class MergeOperator:
    """A merge operator: its name, parameters, whether it needs the initialisation, and its maths."""

    name: str
    parameters: tuple[str, ...]  # names in OPERATOR_PARAMETERS
    merge_delta: MergeDelta | None  # None: the weighted average of the weights themselves
    description: str

    @property
    def needs_init(self) -> bool:
        """Whether it merges deltas from the adapters' shared initialisation (every operator but average)."""
        return self.merge_delta is not None


MERGE_OPERATORS: dict[str, MergeOperator] = {o.name: o for o in (
    MergeOperator("average", (), None, "weighted average of the members' weights (the paper's Eq. 1)"),
    MergeOperator("task_arithmetic", ("lam",), task_arithmetic_delta,
                  "init + lam * weighted mean of the deltas (Ilharco et al. 2023)"),
    MergeOperator("ties", ("density", "lam"), ties_delta,
                  "trim each delta to its top density by |value|, elect a sign by weighted mass, "
                  "weighted mean of the agreeing values (Yadav et al. 2023)"),
    MergeOperator("dare_linear", ("drop_rate", "lam", "merge_seed"), dare_linear_delta,
                  "drop delta entries with probability drop_rate, rescale by 1/(1-drop_rate), "
                  "weighted mean (Yu et al. 2024)"),
    MergeOperator("dare_ties", ("drop_rate", "lam", "merge_seed"), dare_ties_delta,
                  "DARE's drop and rescale, then TIES' sign election and disjoint mean"),
)}
DEFAULT_MERGE_OPERATOR = "average"

HEAD_PROTOCOLS: dict[str, str] = {
    "own": "each target's trained head on the mixed adapter (the paper's protocol)",
    "refit": "a linear head per target refit on the mixed adapter's features of its training split",
}
DEFAULT_HEAD_PROTOCOL = "own"


def check_merge_parameter(name: str, value) -> float | int:
    """Returns ``value`` when it is allowed for operator parameter ``name``; raises SpecError otherwise."""
    return OPERATOR_PARAMETERS[name].check(value)


def check_operator(name: str, field: str = "merge_method") -> MergeOperator:
    """Returns the registered operator ``name``; raises SpecError naming the allowed ones."""
    if name not in MERGE_OPERATORS:
        raise SpecError(f"{field} must be one of {list(MERGE_OPERATORS)}, got {name!r}")
    return MERGE_OPERATORS[name]


def operator_parameters(name: str, given: Mapping[str, object]) -> dict[str, float | int]:
    """The parameters operator ``name`` takes, from ``given`` (spec names; None = not given), checked.

    Parameters the operator does not take are dropped; a missing one gets its default, or
    raises SpecError when it has none (``density`` for TIES, ``drop_rate`` for DARE).
    """
    operator = check_operator(name)
    kept: dict[str, float | int] = {}
    for pname in operator.parameters:
        parameter = OPERATOR_PARAMETERS[pname]
        value = given.get(pname)
        if value is None:
            value = parameter.default
        if value is None:
            raise SpecError(f"merge method {name!r} needs {pname}; it takes {list(operator.parameters)}")
        kept[pname] = parameter.check(value)
    return kept
