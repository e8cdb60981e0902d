"""``MixtureSpace``: sampled params -> ``MixtureSpec``, enumeration, and the pre-filter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from spaces.errors import SpecError
from spaces.fsd import SignIndex
from spaces.space import PRUNE_PARAM, USE_PREFIX, MixtureSpace, auto_max_fsd, conflict_candidates, space_from_config

RATIOS = (0.0, 0.5, 0.9)


def signs(*values: int) -> dict[str, torch.Tensor]:
    return {"layer.0.w": torch.tensor(values, dtype=torch.float32)}


@pytest.fixture(scope="module")
def index() -> SignIndex:
    """Four adapters of 10 weights with hand-counted FSDs:
    a-b 0.2, a-c 0.6, a-d 0.1, b-c 0.8, b-d 0.1, c-d 0.7."""
    return SignIndex.from_weights({
        "a": signs(1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        "b": signs(1, 1, 1, 1, 1, 1, 1, 1, -1, -1),
        "c": signs(-1, -1, -1, -1, -1, -1, 1, 1, 1, 1),
        "d": signs(2, 3, 4, 5, 6, 7, 8, 9, 10, -1),
    })


def space(**overrides) -> MixtureSpace:
    kwargs = dict(domains=("c", "a", "d", "b"), targets=("a",), prune_ratios=RATIOS)
    kwargs.update(overrides)
    return MixtureSpace(**kwargs)


def test_hand_counted_fsds(index):
    expected = {("a", "b"): 0.2, ("a", "c"): 0.6, ("a", "d"): 0.1,
                ("b", "c"): 0.8, ("b", "d"): 0.1, ("c", "d"): 0.7}
    for pair, fsd in expected.items():
        assert index.subset_fsd(pair) == pytest.approx(fsd)


# to_mixture_spec ------------------------------------------------------------------------

def test_to_mixture_spec_reads_use_flags_and_ratio():
    s = space().to_mixture_spec({"use.b": True, "use.c": False, "use.d": True, PRUNE_PARAM: 0.9})
    assert s.members == ("a", "b", "d")
    assert s.targets == ("a",)
    assert (s.prune_method, s.prune_ratio) == ("magnitude", 0.9)


def test_ratio_zero_means_no_pruning_and_missing_ratio_takes_the_first_choice():
    sp = space(prune_ratios=(0.5, 0.0))
    s = sp.to_mixture_spec({"use.b": True})
    assert (s.prune_method, s.prune_ratio) == ("none", 0.0)
    assert sp.to_mixture_spec({"use.b": True, PRUNE_PARAM: 0.5}).prune_method == "magnitude"


@pytest.mark.parametrize("params", [
    {},
    {"use.b": False, "use.c": False, "use.d": False},
    {"use.a": False, "use.b": False},  # a target cannot be switched off
    {"use.a": False, "use.c": True},
])
def test_targets_are_always_members_when_required(params):
    s = space(targets=("a", "b")).to_mixture_spec(params)
    assert {"a", "b"} <= set(s.members)
    assert ("c" in s.members) == params.get("use.c", False)


def test_targets_can_be_left_out_when_not_required():
    s = space(require_targets=False).to_mixture_spec({"use.a": False, "use.c": True})
    assert s.members == ("c",) and s.targets == ("a",)


def test_empty_subset_is_rejected_when_targets_are_not_required():
    with pytest.raises(SpecError, match="empty"):
        space(require_targets=False).to_mixture_spec({"use.a": False})


@pytest.mark.parametrize("params, named", [
    ({"use.vinyl": True}, "'use.vinyl'"),
    ({"books": True}, "'books'"),
    ({"prune": 0.5}, "'prune'"),
    ({"use.b": True, "ratio": 0.5, "use.e": False}, "'ratio', 'use.e'"),
])
def test_unknown_parameter_names_raise(params, named):
    with pytest.raises(SpecError) as info:
        space().to_mixture_spec(params)
    assert named in str(info.value)


@pytest.mark.parametrize("ratio", [0.7, 0.25, 0.95, -0.5, 1.0])
def test_off_grid_ratio_raises(ratio):
    with pytest.raises(SpecError) as info:
        space().to_mixture_spec({"use.b": True, PRUNE_PARAM: ratio})
    assert str(ratio) in str(info.value)


def test_space_rejects_targets_that_are_not_domains():
    with pytest.raises(SpecError, match="'z'"):
        space(targets=("a", "z"))


# params_for -----------------------------------------------------------------------------

@pytest.mark.parametrize("require_targets", [True, False])
def test_params_for_is_the_inverse_of_to_mixture_spec(require_targets):
    sp = space(targets=("b",), require_targets=require_targets)
    seen = 0
    for size in range(1, 5):
        for members in itertools.combinations(sp.domains, size):
            if require_targets and "b" not in members:
                continue
            for ratio in RATIOS:
                s = sp.to_mixture_spec(sp.params_for(members, ratio))
                assert s.members == tuple(sorted(members))
                assert s.prune_ratio == ratio
                assert sp.params_for(s.members, s.prune_ratio) == sp.params_for(members, ratio)
                seen += 1
    assert seen == (8 if require_targets else 15) * len(RATIOS)


def test_params_for_defaults_to_the_first_ratio():
    params = space(prune_ratios=(0.9, 0.5)).params_for(["a", "c"])
    assert params[PRUNE_PARAM] == 0.5
    assert {k for k, v in params.items() if k.startswith(USE_PREFIX) and v} == {"use.c"}


# enumerate / size -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n_targets", [1, 2])
@pytest.mark.parametrize("require_targets", [True, False])
def test_enumerate_yields_size_distinct_specs(n, n_targets, require_targets):
    domains = tuple(f"d{i}" for i in range(n))
    sp = MixtureSpace(domains=domains, targets=domains[:n_targets], prune_ratios=RATIOS,
                      require_targets=require_targets)
    params = list(sp.enumerate())
    keys = {sp.to_mixture_spec(p).key for p in params}
    expected = (2 ** (n - n_targets) if require_targets else 2 ** n - 1) * len(RATIOS)
    assert sp.size() == expected
    assert len(params) == expected
    assert len(keys) == expected


def test_enumerate_goes_smallest_subsets_first():
    sp = space(prune_ratios=(0.0,))
    sizes = [sp.to_mixture_spec(p).k for p in sp.enumerate()]
    assert sizes == sorted(sizes)
    assert sizes[0] == 1 and sizes[-1] == 4


# check: the pre-filter -----------------------------------------------------------------

@pytest.mark.parametrize("measure, members, fsd", [
    ("mean_pairwise", ("a", "c"), 0.6),
    ("mean_pairwise", ("a", "b", "c"), (0.2 + 0.6 + 0.8) / 3),
    ("mean_pairwise", ("a", "c", "d"), (0.6 + 0.1 + 0.7) / 3),
    ("any_conflict", ("a", "c"), 0.6),
    ("any_conflict", ("a", "b", "c"), 0.8),
])
def test_subset_over_max_fsd_is_rejected(index, measure, members, fsd):
    sp = space(max_fsd=0.3, fsd_measure=measure)
    verdict = sp.check(sp.to_mixture_spec(sp.params_for(members)), index)
    assert not verdict.accepted
    assert verdict.fsd == pytest.approx(fsd)
    assert verdict.violation == pytest.approx(fsd - 0.3)
    assert verdict.violation > 0
    assert measure in verdict.reason and "max_fsd" in verdict.reason


@pytest.mark.parametrize("measure, members, fsd", [
    ("mean_pairwise", ("a", "b"), 0.2),
    ("mean_pairwise", ("a", "b", "d"), (0.2 + 0.1 + 0.1) / 3),
    ("any_conflict", ("a", "d"), 0.1),
    ("any_conflict", ("a", "b", "d"), 0.2),
])
def test_subset_under_max_fsd_is_accepted(index, measure, members, fsd):
    sp = space(max_fsd=0.3, fsd_measure=measure)
    verdict = sp.check(sp.to_mixture_spec(sp.params_for(members)), index)
    assert verdict.accepted
    assert verdict.fsd == pytest.approx(fsd)
    assert verdict.violation == 0.0


def test_no_max_fsd_accepts_any_conflict(index):
    sp = space(max_fsd=None)
    assert sp.check(sp.to_mixture_spec(sp.params_for(("a", "b", "c", "d"))), index).accepted


def test_max_members_violation_is_rejected(index):
    sp = space(max_members=2, max_fsd=None)
    verdict = sp.check(sp.to_mixture_spec(sp.params_for(("a", "b", "d", "c"))), index)
    assert not verdict.accepted
    assert verdict.violation == pytest.approx(2.0)
    assert "max_members=2" in verdict.reason and "4 members" in verdict.reason
    assert sp.check(sp.to_mixture_spec(sp.params_for(("a", "d"))), index).accepted


@pytest.mark.parametrize("measure", ["mean_pairwise", "any_conflict"])
@pytest.mark.parametrize("member", ["a", "b", "c", "d"])
def test_singletons_are_always_accepted(index, measure, member):
    sp = space(require_targets=False, max_fsd=0.0, fsd_measure=measure, max_members=1)
    verdict = sp.check(sp.to_mixture_spec(sp.params_for([member])), index)
    assert verdict.accepted
    assert verdict.fsd == 0.0


# space_from_config ----------------------------------------------------------------------

def _search(**overrides):
    """A config's ``search:`` section with its defaults (search/settings/search_section.py states them), averaging
    (the operator these tests of subsets and pruning count with) and weight FSD (the scale of their fixed
    max_fsd thresholds) unless told otherwise."""
    from search.settings.config import SearchConfig

    return SearchConfig(**{"targets": ["a"], "merge_methods": ["average"], "conflict_measure": "weight_fsd",
                           **overrides})


@pytest.mark.parametrize("percentile", [50.0, 75.0, 100.0])
def test_auto_max_fsd_is_the_percentile_of_the_spaces_subsets(index, percentile):
    sp = space()
    fsds = [index.subset_fsd(m, sp.fsd_measure) for m in conflict_candidates(sp)]
    # The member sets with a conflict to measure: a+b .2, a+c .6, a+d .1, a+b+c .5333,
    # a+b+d .1333, a+c+d .4667, a+b+c+d .4167.
    assert len(fsds) == 7
    assert auto_max_fsd(sp, index, percentile) == pytest.approx(float(np.percentile(fsds, percentile)))
    assert auto_max_fsd(sp, index, 50.0) == pytest.approx(2.5 / 6)


def test_conflict_candidates_respect_max_members_and_free_targets(index):
    assert conflict_candidates(space(max_members=2)) == [("a", "b"), ("a", "c"), ("a", "d")]
    free = conflict_candidates(space(require_targets=False))
    assert len(free) == 11 and all(len(m) >= 2 for m in free)  # 2^4 - 4 singletons - empty


def test_conflict_candidates_are_sampled_distinct_and_seeded_in_large_spaces():
    sp = MixtureSpace(domains=tuple(f"d{i:02d}" for i in range(30)), targets=("d00",), max_members=6)
    drawn = conflict_candidates(sp, limit=64, seed=1)
    assert len(drawn) == len(set(drawn)) == 64
    assert all(m[0] == "d00" and 2 <= len(m) <= 6 for m in drawn)
    assert drawn == conflict_candidates(sp, limit=64, seed=1)


def test_auto_max_fsd_filters_nothing_when_no_proposal_has_two_members(index):
    assert auto_max_fsd(space(max_members=1), index, 75.0) is None


def test_space_from_config_copies_the_search_section_and_leaves_max_fsd_to_the_gate(index):
    search = _search(targets=["b"], max_fsd=0.25, prune_ratios=[0.9, 0.0], max_members=3, fsd_measure="any_conflict",
                     require_targets=False, prune_scope="layer", prune_when="mixture")
    sp = space_from_config(search, ["d", "b", "a", "c"])
    assert sp.domains == ("a", "b", "c", "d")
    assert sp.targets == ("b",)
    assert sp.max_fsd is None  # a fixed max_fsd is enforced once, by the FSD gate
    assert sp.prune_ratios == (0.0, 0.9)
    assert (sp.max_members, sp.fsd_measure, sp.require_targets) == (3, "any_conflict", False)
    s = sp.to_mixture_spec(sp.params_for(["a"], 0.9))
    assert (s.prune_scope, s.prune_when) == ("layer", "mixture")
    wider = space_from_config(search, ["a", "b"], targets=["a"], max_members=None)
    assert (wider.targets, wider.max_members) == (("a",), None)


# Pruning methods and Alg. 4's m as search dimensions --------------------------------------

BOTH = ("magnitude", "conflict_layers")


@pytest.mark.parametrize("ratios, methods, layers, per_subset", [
    ((0.0,), BOTH, (1, 3), 1),  # no positive ratio: one unpruned mixture
    ((0.5,), ("magnitude",), (1, 3), 1),  # m is not searched without conflict_layers
    ((0.5,), ("conflict_layers",), (1, 3), 2),
    ((0.5,), BOTH, (2,), 2),
    ((0.5,), BOTH, (1, 3), 3),
    ((0.0, 0.5, 0.9), BOTH, (1, 3), 1 + 2 * (1 + 2)),  # 0.0 once, whatever the method
    ((0.0, 0.5, 0.9), ("conflict_layers",), (1, 2, 4), 1 + 2 * 3),
])
@pytest.mark.parametrize("require_targets", [True, False])
def test_size_and_enumerate_count_methods_and_m(ratios, methods, layers, per_subset, require_targets):
    sp = MixtureSpace(domains=("a", "b", "c", "d"), targets=("a",), prune_ratios=ratios,
                      prune_methods=methods, prune_layers=layers, require_targets=require_targets)
    subsets = 2 ** 3 if require_targets else 2 ** 4 - 1
    params = list(sp.enumerate())
    keys = {sp.to_mixture_spec(p).key for p in params}
    assert sp.size() == subsets * per_subset
    assert len(params) == len(keys) == sp.size()


@pytest.mark.parametrize("methods, layers, carries_method, carries_layers", [
    (("magnitude",), (1, 3), False, False),
    (BOTH, (2,), True, False),
    (("conflict_layers",), (1, 3), False, True),
    (BOTH, (1, 3), True, True),
])
def test_params_carry_method_and_m_only_when_searched(methods, layers, carries_method, carries_layers):
    params = space(prune_methods=methods, prune_layers=layers).params_for(["a", "b"], 0.9)
    assert ("prune_method" in params) is carries_method
    assert ("prune_layers" in params) is carries_layers


@pytest.mark.parametrize("extra, method, m", [
    ({"prune_method": "magnitude"}, "magnitude", 0),
    ({"prune_method": "conflict_layers"}, "conflict_layers", 1),  # the first m
    ({"prune_method": "conflict_layers", "prune_layers": 3}, "conflict_layers", 3),
    ({"prune_method": "magnitude", "prune_layers": 3}, "magnitude", 0),
    ({}, "magnitude", 0),  # the first method
])
def test_to_mixture_spec_reads_method_and_m(extra, method, m):
    sp = space(prune_methods=BOTH, prune_layers=(3, 1))
    s = sp.to_mixture_spec({"use.b": True, PRUNE_PARAM: 0.9, **extra})
    assert (s.prune_method, s.prune_ratio, s.prune_layers) == (method, 0.9, m)
    unpruned = sp.to_mixture_spec({"use.b": True, PRUNE_PARAM: 0.0, **extra})
    assert (unpruned.prune_method, unpruned.prune_layers) == ("none", 0)


@pytest.mark.parametrize("extra, named", [
    ({"prune_method": "random"}, "'random'"),
    ({"prune_method": "none"}, "'none'"),
    ({"prune_layers": 2}, "prune_layers 2"),
])
def test_off_grid_method_or_m_raises(extra, named):
    sp = space(prune_methods=BOTH, prune_layers=(1, 3))
    with pytest.raises(SpecError) as info:
        sp.to_mixture_spec({"use.b": True, PRUNE_PARAM: 0.9, **extra})
    assert named in str(info.value)


def test_params_for_inverts_to_mixture_spec_with_method_and_m():
    sp = space(prune_methods=BOTH, prune_layers=(1, 3))
    for params in sp.enumerate():
        s = sp.to_mixture_spec(params)
        again = sp.params_for(s.members, s.prune_ratio, s.prune_method, s.prune_layers)
        assert sp.to_mixture_spec(again) == s


@pytest.mark.parametrize("overrides, named", [
    (dict(prune_methods=("topk",)), "'topk'"),
    (dict(prune_methods=()), "non-empty"),
    (dict(prune_layers=(0, 2)), "[0, 2]"),
    (dict(prune_layers=()), "non-empty"),
])
def test_space_rejects_bad_methods_and_m(overrides, named):
    with pytest.raises(SpecError) as info:
        space(**overrides)
    assert named in str(info.value)


def test_space_from_config_passes_methods_and_m(index):
    sp = space_from_config(_search(prune_ratios=[0.0, 0.9], prune_methods=["conflict_layers", "magnitude"],
                                   prune_layers=[4, 2]), index.names)
    assert sp.prune_methods == ("conflict_layers", "magnitude")
    assert sp.prune_layers == (2, 4)
    assert sp.size() == 8 * (1 + 1 * (2 + 1))
    defaults = space_from_config(_search(), index.names)
    assert (defaults.prune_methods, defaults.prune_layers) == (("magnitude",), (2,))


def test_a_mutation_changes_at_least_one_parameter_and_keeps_the_operators_parameters_consistent():
    import random

    from spaces.merge_dimensions import MergeChoices

    sp = MixtureSpace(domains=("a", "b", "c", "d"), targets=("a",), prune_ratios=(0.0, 0.5),
                      merge=MergeChoices(merge_methods=("average", "ties", "dare_linear"), densities=(0.2, 0.5),
                                         drop_rates=(0.3, 0.6), lambdas=(1.0, 2.0)))
    rng = random.Random(0)
    parent = sp.random_params(rng)
    for _ in range(300):
        child = sp.mutate_params(parent, rng)
        assert any(child.get(k) != v for k, v in parent.items()) or set(child) != set(parent)
        # Exactly the sampled parameters and the chosen operator's own, each a valid choice.
        expected = {**sp.distributions(), **sp.conditional_distributions(child)}
        assert set(child) == set(expected)
        assert all(child[k] in expected[k].choices for k in child)
        sp.to_mixture_spec(child)  # targets required: every mutation is a mixture
        parent = child
