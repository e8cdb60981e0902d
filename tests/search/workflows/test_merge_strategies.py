"""Strategies over the merge dimensions: exhaustive refuses searched weights; Optuna proposes
every operator with its own parameters, weights on the grid, and enqueued proposals exactly."""

from __future__ import annotations

import pytest

from search.proposals.strategies import make_strategy
from spaces.errors import SpecError
from spaces.merge_dimensions import MergeChoices
from spaces.space import MixtureSpace

DOMAINS = ("books", "dvd", "kitchen")


def space(**merge) -> MixtureSpace:
    return MixtureSpace(domains=DOMAINS, targets=("books",), merge=MergeChoices(**merge))


def test_exhaustive_refuses_a_space_with_searched_weights():
    with pytest.raises(SpecError, match="exhaustive cannot enumerate a continuous space"):
        make_strategy("exhaustive", space=space(weights="searched"))


def test_optuna_proposes_every_operator_with_its_parameters_and_recognises_repeats():
    s = space(merge_methods=("average", "ties", "dare_ties"), densities=(0.5, 0.2), drop_rates=(0.3, 0.9),
              lambdas=(1.0, 2.0), weights="searched")
    strategy = make_strategy("random", space=s, seed=0, study_name="t")
    seen, methods = set(), set()
    for _ in range(40):
        token, params = strategy.ask()
        spec = s.to_mixture_spec(params)
        methods.add(params["merge_method"])
        # Each proposed operator gets its own parameters (the spec may name the canonical operator
        # that merges the same: one member's dare_ties is dare_linear, spaces/canonical.py).
        assert ("density" in params) == (params["merge_method"] == "ties")
        assert ("drop_rate" in params) == (params["merge_method"] == "dare_ties")
        assert spec.merge_method == params["merge_method"] or (spec.k, spec.merge_method) == (1, "dare_linear")
        assert all(round(params[f"weight.{d}"] * 10) == pytest.approx(params[f"weight.{d}"] * 10) for d in DOMAINS)
        seen.add(spec.key)
        strategy.tell(token, "evaluated", 0.5)
    assert methods == {"average", "ties", "dare_ties"}
    # An enqueued proposal (the warm start) comes back as exactly that mixture.
    wanted = s.params_for(["dvd"], merge={"merge_method": "ties", "density": 0.2}, weights={"books": 0.3})
    strategy.enqueue([wanted])
    _, params = strategy.ask()
    assert s.to_mixture_spec(params).key == s.to_mixture_spec(wanted).key
