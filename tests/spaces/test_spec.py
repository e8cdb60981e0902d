"""``make_mixture_spec``: canonical form, stable keys, and errors that name the bad value."""

from __future__ import annotations

import json

import pytest

from spaces.errors import SpecError, UsageError
from spaces.spec import MixtureSpec, make_mixture_spec

DOMAINS = ("books", "dvd", "electronics", "kitchen")


def spec(**overrides) -> MixtureSpec:
    kwargs = dict(members=["dvd", "books"], targets=["books"])
    kwargs.update(overrides)
    return make_mixture_spec(**kwargs)


# Canonical form ---------------------------------------------------------------------

def test_members_are_sorted_and_weights_follow_their_member():
    s = make_mixture_spec(members=["kitchen", "books", "dvd"], targets=["dvd", "books"],
                          weights=[3.0, 1.0, 0.0])
    assert s.members == ("books", "dvd", "kitchen")
    assert s.weights == pytest.approx((0.25, 0.0, 0.75))
    assert s.targets == ("books", "dvd")
    assert s.k == 3


def test_weights_are_uniform_when_omitted_and_sum_to_one():
    s = spec(members=["dvd", "books", "kitchen"])
    assert s.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert sum(s.weights) == pytest.approx(1.0)
    assert s.is_uniform


def test_weights_by_name_are_aligned_with_sorted_members():
    s = spec(weights={"dvd": 3.0, "books": 1.0})
    assert s.members == ("books", "dvd")
    assert s.weights == pytest.approx((0.25, 0.75))
    assert not s.is_uniform


def test_weights_by_name_missing_a_member_give_it_zero():
    s = spec(members=["books", "dvd", "kitchen"], weights={"books": 1.0, "kitchen": 1.0})
    assert s.weights == pytest.approx((0.5, 0.0, 0.5))


def test_prune_method_none_forces_ratio_zero():
    s = spec(prune_method="none", prune_ratio=0.5)
    assert s.prune_ratio == 0.0


# Keys ---------------------------------------------------------------------------------

def test_key_is_stable_across_member_and_target_order():
    a = make_mixture_spec(members=["books", "dvd", "kitchen"], targets=["books", "dvd"],
                          prune_method="magnitude", prune_ratio=0.9)
    b = make_mixture_spec(members=["kitchen", "dvd", "books"], targets=["dvd", "books"],
                          prune_method="magnitude", prune_ratio=0.9)
    assert a == b
    assert a.key == b.key
    assert len(a.key) == 16


def test_key_is_equal_for_equal_mixtures_given_with_scaled_weights():
    assert spec(weights=[1.0, 3.0]).key == spec(weights=[2.0, 6.0]).key
    assert spec().key == spec(weights=[5.0, 5.0]).key


@pytest.mark.parametrize("other", [
    dict(prune_method="magnitude", prune_ratio=0.5),
    dict(prune_method="magnitude", prune_ratio=0.9, prune_scope="layer"),
    dict(weights=[1.0, 3.0]),
    dict(members=["books", "dvd", "kitchen"]),
    dict(members=["books"]),
    dict(targets=["books", "dvd"]),
], ids=["ratio", "scope", "weights", "more-members", "fewer-members", "targets"])
def test_key_differs_for_different_mixtures(other):
    base = spec(prune_method="magnitude", prune_ratio=0.9)
    assert spec(**{"prune_method": "magnitude", "prune_ratio": 0.9, **other}).key != base.key


def test_key_differs_between_two_pruning_ratios():
    assert spec(prune_method="magnitude", prune_ratio=0.8).key != \
        spec(prune_method="magnitude", prune_ratio=0.9).key


@pytest.mark.parametrize("pruned", [
    dict(prune_method="magnitude", prune_ratio=0.0, prune_scope="layer", prune_when="mixture"),
    dict(prune_method="none", prune_ratio=0.7, prune_scope="layer", prune_when="mixture"),
    dict(prune_method="magnitude", prune_ratio=0.0),
])
def test_no_pruning_normalises_the_prune_fields(pruned):
    unpruned = spec()
    s = spec(**pruned)
    assert s.key == unpruned.key
    canonical = s.canonical()
    assert (canonical["prune_method"], canonical["prune_ratio"], canonical["prune_scope"],
            canonical["prune_when"]) == ("none", 0.0, "adapter", "members")
    assert s.label() == "books+dvd"


def test_label_shows_pruning():
    assert spec(prune_method="magnitude", prune_ratio=0.9).label() == "books+dvd @ magnitude 0.9"


# Errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, named", [
    (dict(members=[]), "empty"),
    (dict(targets=[]), "target"),
    (dict(members=["books", "dvd", "books"]), "'books', 'dvd', 'books'"),
    (dict(members=["books", "vinyl"], known_domains=DOMAINS), "'vinyl'"),
    (dict(targets=["books", "vinyl"], members=["books", "vinyl"], known_domains=DOMAINS), "'vinyl'"),
    (dict(targets=["kitchen"]), "'kitchen'"),
    (dict(prune_method="magnitude", prune_ratio=-0.1), "-0.1"),
    (dict(prune_method="magnitude", prune_ratio=1.0001), "[0, 1], got 1.0001"),
    (dict(prune_method="magnitude", prune_ratio=1.5), "1.5"),
    (dict(prune_method="topk", prune_ratio=0.5), "'topk'"),
    (dict(prune_method="magnitude", prune_ratio=0.5, prune_scope="model"), "'model'"),
    (dict(prune_method="magnitude", prune_ratio=0.5, prune_when="after"), "'after'"),
    (dict(weights=[1.0, -0.5]), "-0.5"),
    (dict(weights=[0.0, 0.0]), "[0.0, 0.0]"),
    (dict(weights=[float("nan"), 1.0]), "nan"),
    (dict(weights=[1.0, 1.0, 1.0]), "3 weights for 2 members"),
    (dict(weights=[1.0]), "1 weights for 2 members"),
    (dict(weights={"books": 1.0, "vinyl": 1.0}), "'vinyl'"),
], ids=["empty-subset", "no-targets", "duplicate-members", "unknown-member", "unknown-target",
        "target-not-member", "ratio-negative", "ratio-just-above-one", "ratio-above-one", "bad-method",
        "bad-scope", "bad-when", "negative-weight", "zero-weights", "nan-weight",
        "too-many-weights", "too-few-weights", "weight-for-non-member"])
def test_spec_error_names_the_bad_value(kwargs, named):
    with pytest.raises(SpecError) as info:
        spec(**kwargs)
    assert named in str(info.value)
    # A SpecError is a usage error (the CLI exits 2) and a ValueError.
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)


def test_target_outside_members_is_allowed_when_targets_are_not_required():
    s = spec(members=["dvd"], targets=["books"], require_targets=False)
    assert s.members == ("dvd",) and s.targets == ("books",)


def test_known_domains_accept_known_names():
    assert spec(known_domains=DOMAINS).members == ("books", "dvd")


# Round trip ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(members=["kitchen", "books", "dvd"], weights=[1.0, 2.0, 1.0]),
    dict(prune_method="magnitude", prune_ratio=0.9, prune_scope="layer", prune_when="mixture"),
    dict(members=["dvd"], targets=["books"], require_targets=False),
])
def test_to_dict_from_dict_round_trip(kwargs):
    s = spec(**kwargs)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-safe: it travels to Ray trials
    back = MixtureSpec.from_dict(d)
    assert back == s
    assert back.key == s.key
    assert back.weights == pytest.approx(s.weights)


# conflict_layers (Alg. 4) and 100% sparsity -------------------------------------------

def test_keys_of_mixtures_without_conflict_layers_did_not_change():
    # Keys recorded in MLflow before prune_layers existed (a resumed search matches on them).
    assert spec().key == "0b7b9743f02e86b1"
    assert spec(prune_method="magnitude", prune_ratio=0.9, prune_scope="layer").key == "5c9b2650eeb29671"
    assert "prune_layers" not in spec(prune_method="magnitude", prune_ratio=0.9).canonical()


def conflict(**overrides) -> MixtureSpec:
    return spec(**{"prune_method": "conflict_layers", "prune_ratio": 0.9, "prune_layers": 2, **overrides})


@pytest.mark.parametrize("a, b, equal", [
    (dict(), dict(), True),
    # Alg. 4 always prunes the members layer by layer: scope and timing are not choices.
    (dict(), dict(prune_scope="adapter", prune_when="mixture"), True),
    (dict(), dict(prune_layers=3), False),
    (dict(), dict(prune_ratio=0.8), False),
    (dict(), dict(prune_method="magnitude", prune_scope="layer"), False),
    (dict(prune_ratio=0.0), dict(prune_ratio=0.0, prune_layers=5), True),  # unpruned: m plays no part
    (dict(prune_ratio=0.0), dict(prune_method="none"), True),
    (dict(prune_ratio=1.0), dict(prune_ratio=1.0), True),
    (dict(prune_ratio=1.0), dict(prune_ratio=0.9), False),
], ids=["same", "scope-when-ignored", "m", "ratio", "vs-magnitude", "unpruned-m", "unpruned-none",
        "ratio-one", "ratio-one-vs-0.9"])
def test_conflict_layers_keys(a, b, equal):
    assert (conflict(**a).key == conflict(**b).key) is equal


def test_conflict_layers_canonical_form_and_label():
    s = conflict(prune_layers=3, prune_scope="adapter", prune_when="mixture")
    d = s.canonical()
    assert (d["prune_method"], d["prune_ratio"], d["prune_layers"], d["prune_scope"], d["prune_when"]) == \
        ("conflict_layers", 0.9, 3, "layer", "members")
    assert s.label() == "books+dvd @ conflict_layers 0.9 m=3"
    assert MixtureSpec.from_dict(s.to_dict()) == s
    assert MixtureSpec.from_dict(s.to_dict()).key == s.key


@pytest.mark.parametrize("overrides, prune_layers", [
    (dict(prune_method="magnitude", prune_ratio=0.5, prune_layers=4), 0),
    (dict(prune_method="none", prune_layers=4), 0),
    (dict(prune_method="conflict_layers", prune_ratio=0.0, prune_layers=4), 0),
    (dict(prune_method="conflict_layers", prune_ratio=0.5, prune_layers=4), 4),
])
def test_prune_layers_is_zero_unless_conflict_layers_prunes(overrides, prune_layers):
    assert spec(**overrides).prune_layers == prune_layers


@pytest.mark.parametrize("m", [0, -1, 1.5, True, None])
def test_conflict_layers_needs_m_of_at_least_one(m):
    with pytest.raises(SpecError, match=r"prune_layers must be an integer >= 1 .*got " + repr(m).replace(".", r"\.")):
        conflict(prune_layers=m)


def test_ratio_one_is_a_valid_fully_sparse_mixture():
    s = spec(prune_method="magnitude", prune_ratio=1.0)
    assert (s.prune_method, s.prune_ratio) == ("magnitude", 1.0)
    assert s.label() == "books+dvd @ magnitude 1"
