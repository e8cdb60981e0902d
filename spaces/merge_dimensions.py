"""The merge dimensions of a search: operator, its parameters, and the members' weights.

A :class:`MergeChoices` is the part of a :class:`~spaces.space.MixtureSpace` that says *how*
the chosen members are merged. Its sampled parameters are ``"merge_method"`` (when several
operators are choices), ``"density"`` (ties), ``"drop_rate"`` (dare_linear, dare_ties),
``"lambda"`` (every operator but average), each only when it has several choices, and with
``weights: searched`` one ``"weight.<domain>"`` per domain on a grid
(:data:`WEIGHT_LOW` to :data:`WEIGHT_HIGH` by :data:`WEIGHT_STEP`). A spec normalises the
weights to sum to 1, so weights that are multiples of one another are one mixture (one key):
that is what makes a repeated proposal recognisable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from spaces.errors import SpecError
from spaces.operators import MERGE_OPERATORS, OPERATOR_PARAMETERS, check_operator

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

MERGE_METHOD_PARAM = "merge_method"
WEIGHT_PREFIX = "weight."
WEIGHTINGS = ("uniform", "searched")
# The grid of a searched weight: relative weights 0.1, 0.2, ..., 1.0 (normalised in the spec).
WEIGHT_LOW, WEIGHT_HIGH, WEIGHT_STEP = 0.1, 1.0, 0.1
# Sampled parameter name (the name MLflow logs it under) -> the operator parameter it sets; the
# choices come from the config list of the same parameter (spaces.operators.OPERATOR_PARAMETERS).
# DARE's merge_seed is one value, not a choice.
_OPERATOR_PARAMS = {p.logged_as: p.name for p in OPERATOR_PARAMETERS.values() if not p.integer}
_CHOICES_FIELD = {p.logged_as: p.config_key for p in OPERATOR_PARAMETERS.values() if not p.integer}


def snap_weight(value: float, name: str) -> float:
    """Returns ``value`` snapped to the weight grid (so 0.30000000000000004 is 0.3); SpecError when off it."""
    value = float(value)
    if not (WEIGHT_LOW - 1e-9 <= value <= WEIGHT_HIGH + 1e-9):
        raise SpecError(f"{name} must be in [{WEIGHT_LOW}, {WEIGHT_HIGH}], got {value}")
    return round(round(value / WEIGHT_STEP) * WEIGHT_STEP, 6)


@dataclass(frozen=True)
class MergeChoices:
    """Operators and their parameter choices; ``weights`` "uniform" or "searched" (on a grid).

    The first operator and each list's first value are the defaults: what a proposal that
    does not name them (the greedy warm start) uses; the soup of all averages whatever comes first.
    """

    merge_methods: tuple[str, ...] = ("average",)
    densities: tuple[float, ...] = (0.5,)
    drop_rates: tuple[float, ...] = (0.5,)
    lambdas: tuple[float, ...] = (1.0,)
    weights: str = "uniform"
    merge_seed: int = 0  # DARE's drop masks

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge_methods", tuple(dict.fromkeys(self.merge_methods)))
        if not self.merge_methods:
            raise SpecError(f"merge_methods must be a non-empty list of {list(MERGE_OPERATORS)}, got []")
        for name in self.merge_methods:
            check_operator(name, "merge_methods")
        for sampled, field in _CHOICES_FIELD.items():
            values = tuple(dict.fromkeys(getattr(self, field)))
            if not values:
                raise SpecError(f"{field} must be a non-empty list")
            parameter = OPERATOR_PARAMETERS[_OPERATOR_PARAMS[sampled]]
            object.__setattr__(self, field, tuple(parameter.check(v) for v in values))
        if self.weights not in WEIGHTINGS:
            raise SpecError(f"weights must be one of {list(WEIGHTINGS)}, got {self.weights!r}")

    @property
    def searched_weights(self) -> bool:
        return self.weights == "searched"

    def _choices(self, param: str) -> tuple[float, ...]:
        return getattr(self, _CHOICES_FIELD[param])

    def operator_params(self, method: str) -> tuple[str, ...]:
        """The sampled parameters ``method`` takes that have several choices (so are searched)."""
        takes = MERGE_OPERATORS[method].parameters
        return tuple(p for p, op in _OPERATOR_PARAMS.items() if op in takes and len(self._choices(p)) > 1)

    def names(self, domains: Sequence[str]) -> set[str]:
        """Every parameter name these choices may put in a sampled dict."""
        return {MERGE_METHOD_PARAM, *_OPERATOR_PARAMS, *(WEIGHT_PREFIX + d for d in domains)}

    def distributions(self, domains: Sequence[str]) -> dict[str, BaseDistribution]:
        """The Optuna distributions sampled for every proposal: the operator and the weights."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        out: dict = {}
        if len(self.merge_methods) > 1:
            out[MERGE_METHOD_PARAM] = CategoricalDistribution(list(self.merge_methods))
        if self.searched_weights:
            out.update({WEIGHT_PREFIX + d: FloatDistribution(WEIGHT_LOW, WEIGHT_HIGH, step=WEIGHT_STEP)
                        for d in domains})
        return out

    def operator_distributions(self, method: str) -> dict[str, BaseDistribution]:
        """The Optuna distributions of ``method``'s searched parameters (sampled once it is chosen)."""
        from optuna.distributions import CategoricalDistribution

        return {p: CategoricalDistribution(list(self._choices(p))) for p in self.operator_params(method)}

    def spec_arguments(self, params: Mapping, members: Sequence[str]) -> dict:
        """The ``make_mixture_spec`` keyword arguments (operator, parameters, weights) of ``params``."""
        method = params.get(MERGE_METHOD_PARAM, self.merge_methods[0])
        if method not in self.merge_methods:
            raise SpecError(f"merge_method {method!r} is not one of the choices {list(self.merge_methods)}")
        out: dict = {"merge_method": method, "merge_seed": self.merge_seed}
        for param, op in _OPERATOR_PARAMS.items():
            choices = self._choices(param)
            asked = float(params.get(param, choices[0]))
            value = next((c for c in choices if math.isclose(asked, c)), None)
            if value is None:
                raise SpecError(f"{param} {asked} is not one of the choices {list(choices)}")
            out[op] = value
        if self.searched_weights and len(members) > 1:
            out["weights"] = [snap_weight(params.get(WEIGHT_PREFIX + m, WEIGHT_HIGH), WEIGHT_PREFIX + m)
                              for m in members]
        return out

    def params_for(self, domains: Sequence[str], merge: Mapping | None = None,
                   weights: Mapping[str, float] | None = None) -> dict:
        """The sampled entries for an operator choice ``merge`` (``{"merge_method": ..., "density":
        ...}``, defaults: the first choices) and ``weights`` by member (default: equal)."""
        merge = dict(merge or {})
        method = merge.get(MERGE_METHOD_PARAM, self.merge_methods[0])
        params: dict = {}
        if len(self.merge_methods) > 1:
            params[MERGE_METHOD_PARAM] = method
        for param in self.operator_params(method):
            params[param] = merge.get(param, self._choices(param)[0])
        if self.searched_weights:
            weights = weights or {}
            params.update({WEIGHT_PREFIX + d: weights.get(d, WEIGHT_HIGH) for d in domains})
        return params

    def operator_choices(self) -> list[dict]:
        """Every distinct operator choice, as the ``merge`` argument of :meth:`params_for`."""
        out = []
        for method in self.merge_methods:
            searched = self.operator_params(method)
            for values in itertools.product(*(self._choices(p) for p in searched)):
                out.append({MERGE_METHOD_PARAM: method, **dict(zip(searched, values))})
        return out

    def choice_of(self, spec) -> dict:
        """The operator choice (:meth:`operator_choices`' form) a mixture spec was merged with."""
        params = {p: getattr(spec, _OPERATOR_PARAMS[p]) for p in self.operator_params(spec.merge_method)}
        return {MERGE_METHOD_PARAM: spec.merge_method, **params}

    def weight_grid(self) -> list[float]:
        n = round((WEIGHT_HIGH - WEIGHT_LOW) / WEIGHT_STEP) + 1
        return [round(WEIGHT_LOW + i * WEIGHT_STEP, 6) for i in range(n)]

    def weight_choices(self, members: Sequence[str]) -> Iterator[dict[str, float] | None]:
        """Every weighting of ``members`` on the grid (None: equal weights; one member needs none)."""
        if not self.searched_weights or len(members) < 2:
            yield None
            return
        for values in itertools.product(self.weight_grid(), repeat=len(members)):
            yield dict(zip(members, values))

    def weightings(self, k: int) -> int:
        """How many weightings :meth:`weight_choices` yields for ``k`` members."""
        return len(self.weight_grid()) ** k if self.searched_weights and k >= 2 else 1
