"""The merge dimensions of the search space: operators, their parameters, searched weights."""

from __future__ import annotations

import random

import pytest

from spaces.errors import SpecError
from spaces.merge_dimensions import MergeChoices
from spaces.space import MixtureSpace

DOMAINS = ("books", "dvd", "kitchen")
ALL_OPERATORS = ("average", "task_arithmetic", "ties", "dare_linear", "dare_ties")


def space(**merge) -> MixtureSpace:
    return MixtureSpace(domains=DOMAINS, targets=("books",), merge=MergeChoices(**merge))


@pytest.mark.parametrize("params, expected", [
    ({"merge_method": "average", "density": 0.2, "lambda": 2.0}, dict(merge_method="average")),
    ({"merge_method": "task_arithmetic", "lambda": 2.0}, dict(merge_method="task_arithmetic", lam=2.0)),
    ({"merge_method": "ties", "density": 0.2, "lambda": 0.5},
     dict(merge_method="ties", density=0.2, lam=0.5)),
    ({"merge_method": "dare_linear", "drop_rate": 0.3}, dict(merge_method="dare_linear", drop_rate=0.3, lam=1.0,
                                                              merge_seed=7)),
    ({"merge_method": "dare_ties", "drop_rate": 0.9, "density": 0.2},
     dict(merge_method="dare_ties", drop_rate=0.9, lam=1.0, merge_seed=7)),
])
def test_every_operator_becomes_a_spec_with_only_its_own_parameters(params, expected):
    s = space(merge_methods=ALL_OPERATORS, densities=(0.5, 0.2), drop_rates=(0.3, 0.9), lambdas=(1.0, 0.5, 2.0),
              merge_seed=7)
    spec = s.to_mixture_spec({"use.dvd": True, **params})
    got = {k: getattr(spec, k) for k in ("merge_method", "density", "drop_rate", "lam", "merge_seed")}
    want = {"density": None, "drop_rate": None, "lam": None, "merge_seed": None, **expected}
    assert got == want


def test_a_value_that_is_not_a_choice_is_refused():
    s = space(merge_methods=("ties", "average"), densities=(0.5, 0.2))
    with pytest.raises(SpecError, match=r"density 0.7 is not one of the choices \[0.5, 0.2\]"):
        s.to_mixture_spec({"merge_method": "ties", "density": 0.7})
    with pytest.raises(SpecError, match=r"merge_method 'dare_ties' is not one of the choices"):
        s.to_mixture_spec({"merge_method": "dare_ties"})


def test_operator_parameters_are_conditional_distributions():
    s = space(merge_methods=ALL_OPERATORS, densities=(0.5, 0.2), drop_rates=(0.3, 0.9), lambdas=(1.0, 2.0))
    assert "merge_method" in s.distributions() and "density" not in s.distributions()
    cond = {m: sorted(s.conditional_distributions({"merge_method": m})) for m in ALL_OPERATORS}
    assert cond == {"average": [], "task_arithmetic": ["lambda"], "ties": ["density", "lambda"],
                    "dare_linear": ["drop_rate", "lambda"], "dare_ties": ["drop_rate", "lambda"]}
    # A single choice is not a parameter of the study.
    assert space(merge_methods=("ties",)).distributions().keys() == {"use.dvd", "use.kitchen"}


def test_searched_weights_are_snapped_to_the_grid_and_multiples_are_one_mixture():
    s = space(weights="searched")
    a = s.to_mixture_spec({"use.dvd": True, "weight.books": 0.30000000000000004, "weight.dvd": 0.6})
    b = s.to_mixture_spec({"use.dvd": True, "weight.books": 0.1, "weight.dvd": 0.2})
    c = s.to_mixture_spec({"use.dvd": True, "weight.books": 0.2, "weight.dvd": 0.2, "weight.kitchen": 0.9})
    assert a.weights == pytest.approx((1 / 3, 2 / 3)) and a.key == b.key
    assert c.key != a.key and c.is_uniform  # kitchen is not a member: its weight plays no part
    assert c.key == space().to_mixture_spec({"use.dvd": True}).key
    with pytest.raises(SpecError, match=r"weight.dvd must be in \[0.1, 1.0\], got 0.0"):
        s.to_mixture_spec({"use.dvd": True, "weight.dvd": 0.0})


def test_exhaustive_enumerates_every_operator_choice_and_size_counts_them():
    s = space(merge_methods=("average", "ties", "dare_ties"), densities=(0.5, 0.2))
    params = list(s.enumerate())
    assert len(params) == s.size() == 4 * (1 + 2 + 1)  # subsets x (average, ties d=0.5/0.2, dare_ties)
    specs = {s.to_mixture_spec(p).key: s.to_mixture_spec(p) for p in params}
    assert len(specs) == len(params)
    # One member's dare_ties merges as dare_linear and is named so (spaces/canonical.py).
    assert {sp.merge_method for sp in specs.values() if sp.k > 1} == {"average", "ties", "dare_ties"}
    assert {sp.merge_method for sp in specs.values() if sp.k == 1} == {"average", "ties", "dare_linear"}


def test_searched_weights_space_is_counted_on_the_grid_and_random_proposals_are_valid():
    s = space(weights="searched", merge_methods=("average", "ties"))
    # books alone: 1 weighting; books + one other: 10^2; books + both: 10^3; x 2 operators
    assert s.size() == (1 + 2 * 100 + 1000) * 2
    rng = random.Random(0)
    for _ in range(50):
        spec = s.to_mixture_spec(s.random_params(rng))
        assert spec.merge_method in ("average", "ties") and abs(sum(spec.weights) - 1) < 1e-9


def test_warm_start_and_soup_use_the_first_operator_with_equal_weights():
    s = space(merge_methods=("ties", "average"), densities=(0.2, 0.5), weights="searched")
    spec = s.to_mixture_spec(s.params_for(["dvd", "kitchen"]))
    assert (spec.merge_method, spec.density, spec.is_uniform) == ("ties", 0.2, True)
