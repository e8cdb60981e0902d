"""Mixtures that are the same function are one mixture: the canonical operator, checked on real merges."""

from __future__ import annotations

import pytest
import torch

from spaces.canonical import canonical_merge
from spaces.merge_dimensions import MergeChoices
from spaces.space import MixtureSpace
from spaces.spec import make_mixture_spec
from trainables.mix_and_prune import build_mixture

DOMAINS = ("books", "dvd", "kitchen")
SHAPES = {"layer.0.down.weight": (6, 4), "layer.0.up.weight": (4, 6), "layer.1.down.bias": (6,)}


def adapters(seed: int = 0):
    """An initialisation and three members near it (a delta each), like adapters of one seed."""
    g = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    members = {d: {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init.items()} for d in DOMAINS}
    return init, members


# (proposed, canonical): each pair merges to the same adapter, and must be one mixture.
SAME = [
    (dict(members=["books", "dvd"], merge_method="task_arithmetic", lam=1.0),
     dict(members=["books", "dvd"])),
    (dict(members=["books", "dvd", "kitchen"], weights=[0.2, 0.5, 0.3], merge_method="task_arithmetic"),
     dict(members=["books", "dvd", "kitchen"], weights=[0.2, 0.5, 0.3])),
    (dict(members=["books", "dvd"], merge_method="dare_linear", drop_rate=0.0, lam=2.0, merge_seed=5),
     dict(members=["books", "dvd"], merge_method="task_arithmetic", lam=2.0)),
    (dict(members=["books", "dvd"], merge_method="dare_linear", drop_rate=0.0, lam=1.0, merge_seed=5),
     dict(members=["books", "dvd"])),
    (dict(members=["books", "dvd", "kitchen"], merge_method="dare_ties", drop_rate=0.0, lam=1.5, merge_seed=3),
     dict(members=["books", "dvd", "kitchen"], merge_method="ties", density=1.0, lam=1.5)),
    (dict(members=["books"], merge_method="ties", density=1.0, lam=1.0), dict(members=["books"])),
    (dict(members=["books"], merge_method="ties", density=1.0, lam=2.0),
     dict(members=["books"], merge_method="task_arithmetic", lam=2.0)),
    (dict(members=["books"], merge_method="dare_ties", drop_rate=0.0, lam=1.0), dict(members=["books"])),
    (dict(members=["books"], merge_method="dare_ties", drop_rate=0.5, lam=1.5, merge_seed=2),
     dict(members=["books"], merge_method="dare_linear", drop_rate=0.5, lam=1.5, merge_seed=2)),
    (dict(members=["books", "dvd"], merge_method="task_arithmetic", lam=1.0, prune_method="magnitude",
          prune_ratio=0.5, prune_when="mixture"),
     dict(members=["books", "dvd"], prune_method="magnitude", prune_ratio=0.5, prune_when="mixture")),
]
IDS = ["ta-lambda-1-is-average", "ta-weighted-default-lambda", "dare_linear-drop-0-is-ta", "dare_linear-drop-0-lambda-1",
       "dare_ties-drop-0-is-ties-density-1", "one-member-ties-density-1", "one-member-ties-is-ta",
       "one-member-dare_ties-drop-0", "one-member-dare_ties-is-dare_linear", "pruned-mixture-ta-lambda-1"]

# Not the same function: kept apart.
DIFFERENT = [
    dict(members=["books", "dvd"], merge_method="task_arithmetic", lam=2.0),
    dict(members=["books", "dvd"], merge_method="ties", density=1.0, lam=1.0),
    dict(members=["books", "dvd"], merge_method="ties", density=0.5, lam=1.0),
    dict(members=["books", "dvd"], merge_method="dare_linear", drop_rate=0.3, lam=1.0, merge_seed=0),
    dict(members=["books", "dvd"], merge_method="dare_ties", drop_rate=0.3, lam=1.0, merge_seed=0),
    dict(members=["books"], merge_method="ties", density=0.5, lam=1.0),
]


def _raw_merge(spec_kwargs, init, members):
    """The adapter the *proposed* operator computes, merged without the spec's rewriting."""
    from trainables.merging import merge_adapters
    from trainables.mix_and_prune import prune_by_magnitude

    names = sorted(spec_kwargs["members"])
    order = [spec_kwargs["members"].index(n) for n in names]
    weights = spec_kwargs.get("weights")
    weights = None if weights is None else [weights[i] for i in order]
    method = spec_kwargs.get("merge_method", "average")
    params = {k: spec_kwargs[name] for k, name in (("density", "density"), ("drop_rate", "drop_rate"),
                                                    ("lam", "lam"), ("merge_seed", "merge_seed")) if name in spec_kwargs}
    merged = merge_adapters([members[n] for n in names], method=method, weights=weights,
                            init=None if method == "average" else init, **params)
    if spec_kwargs.get("prune_when") == "mixture":
        merged = prune_by_magnitude(merged, spec_kwargs["prune_ratio"])
    return merged


@pytest.mark.parametrize("proposed, canonical", SAME, ids=IDS)
def test_a_mixture_that_merges_like_another_is_the_same_mixture(proposed, canonical):
    init, members = adapters()
    spec = make_mixture_spec(targets=["books"], **proposed)
    expected = make_mixture_spec(targets=["books"], **canonical)
    assert spec == expected and spec.key == expected.key
    # ... and it is the same function: what the proposed operator merges is what the canonical one merges.
    raw = _raw_merge(proposed, init, members)
    built = build_mixture(members, spec, init)
    for key in SHAPES:
        torch.testing.assert_close(built[key], raw[key], atol=1e-5, rtol=0)


def test_mixtures_that_merge_differently_keep_their_own_keys():
    keys = [make_mixture_spec(targets=["books"], **kw).key for kw in DIFFERENT]
    keys.append(make_mixture_spec(targets=["books"], members=["books", "dvd"]).key)
    keys.append(make_mixture_spec(targets=["books"], members=["books"]).key)
    assert len(set(keys)) == len(keys)
    assert make_mixture_spec(targets=["books"], **DIFFERENT[1]).merge_method == "ties"


def test_the_search_space_proposes_task_arithmetic_at_lambda_1_as_the_average_it_is():
    space = MixtureSpace(domains=DOMAINS, targets=("books",),
                         merge=MergeChoices(merge_methods=("average", "task_arithmetic"), lambdas=(1.0, 2.0)))
    average = space.to_mixture_spec({"use.dvd": True, "merge_method": "average"})
    ta_1 = space.to_mixture_spec({"use.dvd": True, "merge_method": "task_arithmetic", "lambda": 1.0})
    ta_2 = space.to_mixture_spec({"use.dvd": True, "merge_method": "task_arithmetic", "lambda": 2.0})
    assert ta_1.key == average.key and ta_1.label() == "books+dvd"
    assert ta_2.key != average.key


def test_canonical_merge_leaves_an_operator_without_an_identity_alone():
    assert canonical_merge("ties", {"density": 0.2, "lam": 1.5}, 3) == ("ties", {"density": 0.2, "lam": 1.5})
    assert canonical_merge("dare_ties", {"drop_rate": 0.5, "lam": 1.0, "seed": 0}, 2) == \
        ("dare_ties", {"drop_rate": 0.5, "lam": 1.0, "seed": 0})
