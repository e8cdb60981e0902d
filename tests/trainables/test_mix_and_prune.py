"""Hand-computed cases for averaging and magnitude pruning of adapters."""

from __future__ import annotations

import pytest
import torch
from tests_support import two_layer_adapters

from spaces.spec import make_mixture_spec
from trainables.mix_and_prune import (
    average_weights,
    build_mixture,
    conflict_layer_ranking,
    prune_by_magnitude,
    prune_conflict_layers,
    sparsity,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def as_lists(weights: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: [round(x, 6) for x in v.flatten().tolist()] for k, v in weights.items()}


@pytest.mark.parametrize("weights, expected", [
    (None, [2.0, 4.0, 0.0]),
    ([1, 1], [2.0, 4.0, 0.0]),
    ([1, 3], [2.5, 5.0, 0.5]),  # normalised to 0.25 / 0.75
    ([0.2, 0.0], [1.0, 2.0, -1.0]),
])
def test_average_weights(weights, expected):
    a = {"w": t(1, 2, -1)}
    b = {"w": t(3, 6, 1)}
    assert as_lists(average_weights([a, b], weights)) == {"w": expected}


def test_average_keeps_shape_and_dtype_and_leaves_inputs_alone():
    a = {"m": torch.ones(2, 3, dtype=torch.float16)}
    b = {"m": torch.full((2, 3), 3.0, dtype=torch.float16)}
    out = average_weights([a, b])
    assert out["m"].dtype == torch.float16 and tuple(out["m"].shape) == (2, 3)
    assert torch.all(out["m"] == 2.0)
    out["m"].zero_()
    assert torch.all(a["m"] == 1.0) and torch.all(b["m"] == 3.0)


@pytest.mark.parametrize("members, weights, message", [
    ([], None, "empty list"),
    ([{"w": t(1)}, {"v": t(1)}], None, "'v'"),
    ([{"w": t(1)}, {"w": t(1, 2)}], None, r"'w' has shape \(2,\) in member 1 but \(1,\)"),
    ([{"w": t(1)}, {"w": t(1)}], [1.0, -0.5], r"got \[1.0, -0.5\]"),
    ([{"w": t(1)}, {"w": t(1)}], [0.0, 0.0], r"got \[0.0, 0.0\]"),
    ([{"w": t(1)}, {"w": t(1)}], [1.0], "got 1 weights for 2 members"),
])
def test_average_errors_name_the_bad_value(members, weights, message):
    with pytest.raises(ValueError, match=message):
        average_weights(members, weights)


@pytest.mark.parametrize("ratio, expected", [
    (0.0, [0.5, -0.1, 0.1, 0.1, 2.0, -0.3]),
    (1 / 6, [0.5, 0.0, 0.1, 0.1, 2.0, -0.3]),  # ties at 0.1: the earliest position goes first
    (2 / 6, [0.5, 0.0, 0.0, 0.1, 2.0, -0.3]),
    (0.5, [0.5, 0.0, 0.0, 0.0, 2.0, -0.3]),
    (0.55, [0.5, 0.0, 0.0, 0.0, 2.0, -0.3]),  # round(3.3) = 3
    (0.75, [0.5, 0.0, 0.0, 0.0, 2.0, 0.0]),  # round(4.5) = 4 (Python rounds half to even)
    (0.9, [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]),  # round(5.4) = 5
])
def test_prune_by_magnitude_zeroes_exactly_round_ratio_n(ratio, expected):
    weights = {"w": t(0.5, -0.1, 0.1, 0.1, 2.0, -0.3)}
    pruned = prune_by_magnitude(weights, ratio)
    assert as_lists(pruned) == {"w": expected}
    assert sparsity(pruned) == pytest.approx(round(ratio * 6) / 6)


def test_prune_ties_across_tensors_follow_sorted_key_order():
    weights = {"b": t(0.1, 5.0), "a": t(0.1, 7.0)}
    pruned = prune_by_magnitude(weights, 0.25)
    assert list(pruned) == ["b", "a"]  # the caller's key order is kept
    assert as_lists(pruned) == {"b": [0.1, 5.0], "a": [0.0, 7.0]}


@pytest.mark.parametrize("scope, expected", [
    # One ranking over 6 values: the 3 smallest are all in layer 0.
    ("adapter", {"enc.layer.0.w": [0.0, 0.0, 0.0, 4.0], "enc.layer.1.w": [10.0, 20.0]}),
    # Per layer: round(0.5 * 4) = 2 zeros in layer 0, round(0.5 * 2) = 1 in layer 1.
    ("layer", {"enc.layer.0.w": [0.0, 0.0, 3.0, 4.0], "enc.layer.1.w": [0.0, 20.0]}),
])
def test_prune_scope(scope, expected):
    weights = {"enc.layer.0.w": t(1, -2, 3, 4), "enc.layer.1.w": t(10, 20)}
    assert as_lists(prune_by_magnitude(weights, 0.5, scope=scope)) == expected


def test_prune_keeps_shapes_and_never_modifies_its_input():
    g = torch.Generator().manual_seed(0)
    weights = {"layer.0.m": torch.randn(4, 5, generator=g), "layer.1.v": torch.randn(7, generator=g)}
    before = {k: v.clone() for k, v in weights.items()}
    pruned = prune_by_magnitude(weights, 0.6)
    assert {k: tuple(v.shape) for k, v in pruned.items()} == {"layer.0.m": (4, 5), "layer.1.v": (7,)}
    assert sum(int((v == 0).sum()) for v in pruned.values()) == round(0.6 * 27)
    for k in weights:
        assert torch.equal(weights[k], before[k])
    # Kept entries are the large ones: every kept |w| >= every pruned |w|.
    flat_w = torch.cat([weights[k].flatten() for k in sorted(weights)]).abs()
    flat_p = torch.cat([pruned[k].flatten() for k in sorted(pruned)])
    assert flat_w[flat_p != 0].min() >= flat_w[flat_p == 0].max()
    copies = prune_by_magnitude(weights, 0.0)
    copies["layer.1.v"].zero_()
    assert torch.equal(weights["layer.1.v"], before["layer.1.v"])


@pytest.mark.parametrize("ratio, scope, message", [
    (1.5, "adapter", r"ratio must be in \[0, 1\], got 1.5"),
    (-0.1, "adapter", r"ratio must be in \[0, 1\], got -0.1"),
    (float("nan"), "adapter", "got nan"),
    (0.5, "row", "got 'row'"),
])
def test_prune_errors_name_the_bad_value(ratio, scope, message):
    with pytest.raises(ValueError, match=message):
        prune_by_magnitude({"w": t(1, 2)}, ratio, scope=scope)


def test_sparsity():
    assert sparsity({"a": t(0, 1, 0), "b": torch.zeros(2, 2), "c": t(-0.0, 3)}) == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="no parameters"):
        sparsity({})


MEMBERS = {"a": {"w": t(1.0, -0.2)}, "b": {"w": t(-0.1, 1.0)}, "c": {"w": t(9.0, 9.0)}}


@pytest.mark.parametrize("spec_args, expected", [
    ({}, [0.45, 0.4]),
    ({"weights": {"a": 3, "b": 1}}, [0.725, 0.1]),
    ({"prune_method": "none", "prune_ratio": 0.5}, [0.45, 0.4]),
    # Members pruned first: a -> [1, 0], b -> [0, 1]; their mean keeps both positions.
    ({"prune_method": "magnitude", "prune_ratio": 0.5, "prune_when": "members"}, [0.5, 0.5]),
    # Mixture pruned: [0.45, 0.4] -> the smaller entry goes.
    ({"prune_method": "magnitude", "prune_ratio": 0.5, "prune_when": "mixture"}, [0.45, 0.0]),
])
def test_build_mixture(spec_args, expected):
    spec = make_mixture_spec(members=["b", "a"], targets=["a"], **spec_args)
    assert as_lists(build_mixture(MEMBERS, spec)) == {"w": expected}


def test_build_mixture_per_layer_pruning_of_members():
    members = {
        "a": {"layer.0.w": t(1, 2), "layer.1.w": t(-5, 6)},
        "b": {"layer.0.w": t(3, 1), "layer.1.w": t(7, 8)},
    }
    spec = make_mixture_spec(members=["a", "b"], targets=["a"], prune_method="magnitude",
                             prune_ratio=0.5, prune_scope="layer")
    # a -> layer.0 [0, 2], layer.1 [0, 6]; b -> layer.0 [3, 0], layer.1 [0, 8].
    assert as_lists(build_mixture(members, spec)) == {"layer.0.w": [1.5, 1.0], "layer.1.w": [0.0, 7.0]}


def test_build_mixture_names_a_missing_member():
    spec = make_mixture_spec(members=["a", "zzz"], targets=["a"])
    with pytest.raises(ValueError, match=r"\['zzz'\].*available: \['a', 'b', 'c'\]"):
        build_mixture(MEMBERS, spec)


# Mixing sparse adapters (Alg. 4): prune the m most sign-conflicting layers, then average ----

def layer_name(i: int) -> str:
    return f"bert.encoder.layer.{i}.output.adapters.signmix.adapter_down.0.weight"


# Three members, four layers of four weights. Per-layer FSDs, counted by hand:
#   layer.0  same signs everywhere                                 -> 0
#   layer.1  a-b differ at 0,1 (2/4); a-c at 1 (1/4); b-c at 0 (1/4) -> mean 1/3
#   layer.2  a-b differ everywhere (1); a-c at 2,3; b-c at 0,1      -> mean 2/3
#   layer.10 the sign pattern of layer.1                            -> mean 1/3 (a tie)
ALG4 = {
    "a": {layer_name(0): t(1, 2, 3, 4), layer_name(1): t(4, -3, 2, 1),
          layer_name(2): t(1, 2, 3, 4), layer_name(10): t(2, -1, 1, 1)},
    "b": {layer_name(0): t(2, 3, 4, 5), layer_name(1): t(-1, 2, 3, 4),
          layer_name(2): t(-4, -3, -2, -1), layer_name(10): t(-1, 1, 1, 1)},
    "c": {layer_name(0): t(1, 1, 1, 1), layer_name(1): t(1, 5, 3, 2),
          layer_name(2): t(5, 6, -7, -8), layer_name(10): t(1, 1, 1, 1)},
}


@pytest.mark.parametrize("members, expected", [
    # Ties (layer.1 / layer.10) in layer order: layer.2 before layer.10, not string order.
    (("a", "b", "c"), [("layer.2", 2 / 3), ("layer.1", 1 / 3), ("layer.10", 1 / 3), ("layer.0", 0.0)]),
    (("a", "b"), [("layer.2", 1.0), ("layer.1", 0.5), ("layer.10", 0.5), ("layer.0", 0.0)]),
    (("a", "c"), [("layer.2", 0.5), ("layer.1", 0.25), ("layer.10", 0.25), ("layer.0", 0.0)]),
    # One member: nothing conflicts, every layer scores 0 and keeps its layer order.
    (("c",), [("layer.0", 0.0), ("layer.1", 0.0), ("layer.2", 0.0), ("layer.10", 0.0)]),
])
def test_conflict_layer_ranking(members, expected):
    ranking = conflict_layer_ranking({m: ALG4[m] for m in members})
    assert [layer for layer, _ in ranking] == [layer for layer, _ in expected]
    assert [fsd for _, fsd in ranking] == pytest.approx([fsd for _, fsd in expected])


@pytest.mark.parametrize("m, ratio, pruned_layers, zeros_per_layer", [
    (1, 0.5, {2}, 2),
    (2, 0.5, {2, 1}, 2),
    (2, 0.75, {2, 1}, 3),  # round(0.75 * 4) = 3
    (3, 0.25, {2, 1, 10}, 1),
    (9, 0.5, {2, 1, 10, 0}, 2),  # m beyond the number of layers: every layer
    (2, 1.0, {2, 1}, 4),  # 100% sparse layers
])
def test_prune_conflict_layers_prunes_exactly_the_m_most_conflicting_layers(m, ratio, pruned_layers, zeros_per_layer):
    before = {d: {k: v.clone() for k, v in w.items()} for d, w in ALG4.items()}
    out = prune_conflict_layers(ALG4, ratio, m)
    assert sorted(out) == ["a", "b", "c"]
    for domain, weights in out.items():
        assert list(weights) == list(ALG4[domain])
        for i in (0, 1, 2, 10):
            original, pruned = ALG4[domain][layer_name(i)], weights[layer_name(i)]
            if i in pruned_layers:
                assert int((pruned == 0).sum()) == zeros_per_layer
                # What is kept is the largest |w| of this member's layer, unchanged.
                kept = pruned != 0
                assert torch.equal(pruned[kept], original[kept])
                if kept.any() and (~kept).any():
                    assert original[kept].abs().min() >= original[~kept].abs().max()
            else:
                assert torch.equal(pruned, original)
    for domain in ALG4:  # inputs are never modified
        for k in ALG4[domain]:
            assert torch.equal(ALG4[domain][k], before[domain][k])


def test_build_mixture_with_conflict_layers_prunes_members_then_averages():
    spec = make_mixture_spec(members=["c", "a", "b"], targets=["a"], prune_method="conflict_layers",
                             prune_ratio=0.5, prune_layers=2)
    # layer.2 and layer.1 lose their 2 smallest |w| in every member, then the three are averaged:
    #   layer.1: a [4,-3,0,0], b [0,0,3,4], c [0,5,3,0]
    #   layer.2: a [0,0,3,4], b [-4,-3,0,0], c [0,0,-7,-8]
    # layer.0 and layer.10 are the plain average of the dense members.
    expected = {
        layer_name(0): [4 / 3, 2.0, 8 / 3, 10 / 3],
        layer_name(1): [4 / 3, 2 / 3, 2.0, 4 / 3],
        layer_name(2): [-4 / 3, -1.0, -4 / 3, -4 / 3],
        layer_name(10): [2 / 3, 1 / 3, 1.0, 1.0],
    }
    assert as_lists(build_mixture(ALG4, spec)) == {k: [round(x, 6) for x in v] for k, v in expected.items()}


def test_build_mixture_with_conflict_layers_ignores_prune_when():
    args = dict(members=["a", "b", "c"], targets=["a"], prune_method="conflict_layers", prune_ratio=0.5,
                prune_layers=1)
    members_first = build_mixture(ALG4, make_mixture_spec(**args, prune_when="members"))
    mixture_after = build_mixture(ALG4, make_mixture_spec(**args, prune_when="mixture", prune_scope="adapter"))
    assert as_lists(members_first) == as_lists(mixture_after)


@pytest.mark.parametrize("method, extra", [("magnitude", {}), ("magnitude", {"prune_when": "mixture"}),
                                           ("conflict_layers", {"prune_layers": 99})])
def test_ratio_one_zeroes_the_whole_mixture(method, extra):
    spec = make_mixture_spec(members=["a", "b", "c"], targets=["a"], prune_method=method, prune_ratio=1.0, **extra)
    mixture = build_mixture(ALG4, spec)
    assert sparsity(mixture) == 1.0
    assert sparsity(prune_by_magnitude(ALG4["a"], 1.0)) == 1.0
    assert sparsity(prune_by_magnitude(ALG4["a"], 1.0, scope="layer")) == 1.0


@pytest.mark.parametrize("ratio, m, message", [
    (1.5, 1, r"sparsity must be in \[0, 1\], got 1.5"),
    (-0.1, 1, r"sparsity must be in \[0, 1\], got -0.1"),
    (0.5, 0, "m must be an integer >= 1, got 0"),
    (0.5, 1.0, "m must be an integer >= 1, got 1.0"),
])
def test_prune_conflict_layers_errors_name_the_bad_value(ratio, m, message):
    with pytest.raises(ValueError, match=message):
        prune_conflict_layers(ALG4, ratio, m)


def test_conflict_layer_ranking_rejects_mismatched_members():
    with pytest.raises(ValueError, match="different parameters"):
        conflict_layer_ranking({"a": ALG4["a"], "x": {layer_name(0): t(1, 2, 3, 4)}})


# Weights shared through the Ray object store -----------------------------------------------

@pytest.mark.parametrize("method, ratio, when", [
    ("magnitude", 0.0, "members"), ("magnitude", 0.5, "members"), ("magnitude", 0.5, "mixture"),
    ("conflict_layers", 0.5, "members")])
def test_build_mixture_never_writes_into_its_inputs(method, ratio, when):
    # Trials mix tensors that share the object store's read-only memory (fetch_members).
    weights = two_layer_adapters()
    before = {d: {k: t.clone() for k, t in w.items()} for d, w in weights.items()}
    for members in (["a"], ["a", "b"], ["a", "b", "c"]):
        spec = make_mixture_spec(members=members, targets=["a"], prune_ratio=ratio,
                                 prune_method=method if ratio else "none", prune_when=when,
                                 prune_layers=1 if method == "conflict_layers" and ratio else 0)
        build_mixture(weights, spec)
    for d in weights:
        for k in weights[d]:
            assert torch.equal(weights[d][k], before[d][k]), (d, k)
