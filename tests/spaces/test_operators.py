"""Merge operators and head protocols in a MixtureSpec: canonical form, keys, labels, errors."""

from __future__ import annotations

import pytest

from spaces.errors import SpecError
from spaces.operators import MERGE_OPERATORS
from spaces.spec import MixtureSpec, make_mixture_spec


def spec(**kw) -> MixtureSpec:
    return make_mixture_spec(**{"members": ["books", "dvd"], "targets": ["books"], **kw})


def test_keys_of_average_own_mixtures_are_those_recorded_before_operators_existed():
    # Hashes of the canonical specs as signmix wrote them before merge operators and head
    # protocols (commit ba69da0): MLflow runs and resumed searches still match them.
    assert spec().key == "0b7b9743f02e86b1"
    assert spec(merge_method="average", head="own").key == "0b7b9743f02e86b1"
    assert spec(prune_method="conflict_layers", prune_ratio=0.5, prune_layers=2).key == "ec6c321691064f41"
    assert spec(weights=[3, 1], prune_method="magnitude", prune_ratio=0.5).key == "57be58dd9429090d"
    assert "merge_method" not in spec().canonical() and "head" not in spec().canonical()


@pytest.mark.parametrize("a, b", [
    (dict(), dict(merge_method="task_arithmetic", lam=2.0)),
    (dict(merge_method="ties", density=0.5), dict(merge_method="ties", density=0.2)),
    (dict(merge_method="ties", density=0.5), dict(merge_method="ties", density=0.5, lam=2.0)),
    (dict(merge_method="ties", density=0.5), dict(merge_method="dare_ties", drop_rate=0.5)),
    (dict(merge_method="dare_ties", drop_rate=0.5), dict(merge_method="dare_linear", drop_rate=0.5)),
    (dict(merge_method="dare_ties", drop_rate=0.5), dict(merge_method="dare_ties", drop_rate=0.5, merge_seed=1)),
    (dict(), dict(head="refit")),
    (dict(merge_method="ties", density=0.5), dict(merge_method="ties", density=0.5, head="refit")),
])
def test_different_operators_parameters_or_heads_give_different_keys(a, b):
    assert spec(**a).key != spec(**b).key


@pytest.mark.parametrize("a, b", [
    (dict(merge_method="ties", density=0.5), dict(merge_method="ties", density=0.5, drop_rate=0.3, merge_seed=7)),
    (dict(merge_method="ties", density=0.5), dict(merge_method="ties", density=0.5, lam=1.0)),
    (dict(merge_method="dare_linear", drop_rate=0.2), dict(merge_method="dare_linear", drop_rate=0.2, density=0.9,
                                                            merge_seed=0)),
    (dict(), dict(density=0.5, drop_rate=0.5, lam=3.0, merge_seed=4)),  # average takes no parameter
    (dict(merge_method="task_arithmetic", lam=2), dict(merge_method="task_arithmetic", lam=2.0, density=0.1)),
    (dict(), dict(merge_method="task_arithmetic")),  # λ 1 is the average: one mixture (spaces/canonical.py)
])
def test_parameters_the_operator_does_not_take_are_ignored(a, b):
    assert spec(**a).key == spec(**b).key
    assert spec(**a) == spec(**b)


@pytest.mark.parametrize("name", list(MERGE_OPERATORS))
def test_canonical_form_keeps_exactly_the_operators_parameters_and_round_trips(name):
    s = spec(merge_method=name, density=0.4, drop_rate=0.3, lam=1.5, merge_seed=3, head="refit")
    d = s.canonical()
    kept = set(MERGE_OPERATORS[name].parameters)  # one name per parameter: the spec's is the operator's
    assert {k for k in ("density", "drop_rate", "lam", "merge_seed") if k in d} == kept
    assert d.get("merge_method", "average") == name and d["head"] == "refit"
    back = MixtureSpec.from_dict(s.to_dict())
    assert back == s and back.key == s.key


@pytest.mark.parametrize("kw, label", [
    (dict(merge_method="ties", density=0.5, head="refit"), "books+dvd ties d=0.5 λ=1 [refit]"),
    (dict(merge_method="dare_ties", drop_rate=0.3), "books+dvd dare_ties p=0.3 λ=1"),
    (dict(merge_method="dare_linear", drop_rate=0.3, merge_seed=5, lam=2), "books+dvd dare_linear p=0.3 λ=2 seed=5"),
    (dict(merge_method="task_arithmetic", weights=[2, 1], lam=1.5), "books×0.67+dvd×0.33 task_arithmetic λ=1.5"),
    (dict(merge_method="task_arithmetic", weights=[2, 1]), "books×0.67+dvd×0.33"),  # λ 1: the average
    (dict(prune_method="magnitude", prune_ratio=0.9, head="refit"), "books+dvd @ magnitude 0.9 [refit]"),
    (dict(), "books+dvd"),
])
def test_label_shows_operator_parameters_weights_and_head(kw, label):
    assert spec(**kw).label() == label


@pytest.mark.parametrize("kw, message", [
    (dict(merge_method="magic"), "merge_method must be one of ['average', 'task_arithmetic', 'ties', "
                                 "'dare_linear', 'dare_ties'], got 'magic'"),
    (dict(merge_method="ties"), "merge method 'ties' needs density"),
    (dict(merge_method="ties", density=0.0), "density must be in (0, 1], got 0.0"),
    (dict(merge_method="ties", density=1.5), "density must be in (0, 1], got 1.5"),
    (dict(merge_method="dare_ties"), "merge method 'dare_ties' needs drop_rate"),
    (dict(merge_method="dare_ties", drop_rate=1.0), "drop_rate must be in [0, 1), got 1.0"),
    (dict(merge_method="task_arithmetic", lam=0), "lam must be a finite number > 0, got 0"),
    (dict(merge_method="dare_linear", drop_rate=0.1, merge_seed=1.5), "merge_seed must be an integer, got 1.5"),
    (dict(head="fresh"), "head must be one of ['own', 'refit'], got 'fresh'"),
])
def test_bad_operator_settings_name_the_value_and_what_is_allowed(kw, message):
    with pytest.raises(SpecError) as err:
        spec(**kw)
    assert message in str(err.value)
