"""The merge operators: hand-computed cases, PEFT's merge_utils as the numerical reference, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from peft.utils import merge_utils as peft

from spaces.errors import SpecError
from spaces.merge_maths import dare_seed, drop_and_rescale, elect_and_merge, kept_count, trim_by_magnitude
from spaces.operators import MERGE_OPERATORS
from trainables.merging import merge_adapters

# Three members of a one-parameter adapter, and their deltas from init = 1:
#   d0 = [ 1, -1,  0.5, 0  ]
#   d1 = [ 3,  1, -1,   0  ]
#   d2 = [-1,  1,  0,   0.5]
INIT = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
MEMBERS = [{"w": torch.tensor([2.0, 0.0, 1.5, 1.0])},
           {"w": torch.tensor([4.0, 2.0, 0.0, 1.0])},
           {"w": torch.tensor([0.0, 2.0, 1.0, 1.5])}]

HAND_CASES = [
    # uniform task arithmetic at lam 1 is the plain average: [6/3, 4/3, 2.5/3, 3.5/3]
    ("task_arithmetic", {}, None, [2.0, 4 / 3, 5 / 6, 7 / 6]),
    # weights [2,1,1] -> [.5,.25,.25]: sum = [1, 0, 0, .125]; times lam 2, plus init
    ("task_arithmetic", {"lam": 2.0}, [2, 1, 1], [3.0, 1.0, 1.0, 1.25]),
    # density .5 keeps 2 of 4 (ties in |d| keep the earlier entry):
    #   d0 -> [1,-1,0,0], d1 -> [3,1,0,0], d2 -> [-1,1,0,0]
    # elected signs [+,+,+(tie),+(tie)]; agreeing means [(1+3)/2, (1+1)/2, none, none]
    ("ties", {"density": 0.5}, None, [3.0, 2.0, 1.0, 1.0]),
    ("ties", {"density": 0.5, "lam": 0.5}, None, [2.0, 1.5, 1.0, 1.0]),
    # weights [3,0,1] -> [.75,0,.25]: weighted sums pos0 .5 (+), pos1 -.5 (-): only d0 agrees
    # (an unweighted vote would tie at pos1 and elect +, taking d2's +1 instead)
    ("ties", {"density": 0.5}, [3, 0, 1], [2.0, 0.0, 1.0, 1.0]),
    # density 1 trims nothing: sums [3, 1, -.5, .5] elect [+,+,-,+]; means [2, 1, -1, .5]
    ("ties", {"density": 1.0}, None, [3.0, 2.0, 0.0, 1.5]),
    # drop_rate 0 drops nothing: DARE is task arithmetic, DARE-TIES is TIES without trimming
    ("dare_linear", {"drop_rate": 0.0, "lam": 2.0}, [2, 1, 1], [3.0, 1.0, 1.0, 1.25]),
    ("dare_ties", {"drop_rate": 0.0}, None, [3.0, 2.0, 0.0, 1.5]),
]


@pytest.mark.parametrize(("method", "params", "weights", "expected"), HAND_CASES)
def test_operators_on_hand_computed_tensors(method, params, weights, expected):
    merged = merge_adapters(MEMBERS, method=method, weights=weights, init=INIT, **params)
    torch.testing.assert_close(merged["w"], torch.tensor(expected), atol=1e-6, rtol=0)


def test_average_is_mixing_average_and_takes_no_init():
    # weights [.25, .25, .5] of the members themselves: [.5+1+0, 0+.5+1, .375+0+.5, .25+.25+.75]
    merged = merge_adapters(MEMBERS, method="average", weights=[1, 1, 2])
    torch.testing.assert_close(merged["w"], torch.tensor([1.5, 1.5, 0.875, 1.25]), atol=1e-6, rtol=0)


def test_zero_weight_member_is_the_same_as_leaving_it_out():
    for method, params in [("ties", {"density": 0.5}), ("dare_ties", {"drop_rate": 0.0}),
                           ("task_arithmetic", {})]:
        with_zero = merge_adapters(MEMBERS, method=method, weights=[1, 0, 1], init=INIT, **params)
        without = merge_adapters([MEMBERS[0], MEMBERS[2]], method=method, init=INIT, **params)
        torch.testing.assert_close(with_zero["w"], without["w"], atol=0, rtol=0)


def test_dare_drops_about_drop_rate_and_rescales_the_rest():
    delta = torch.ones(20_000)
    dropped = drop_and_rescale(delta, 0.75, seed=3)
    assert set(dropped.unique().tolist()) == {0.0, 4.0}
    assert abs(float((dropped == 0).float().mean()) - 0.75) < 0.02
    assert abs(float(dropped.mean()) - 1.0) < 0.05  # the expectation is preserved


def test_dare_mask_depends_only_on_seed_key_and_member_index():
    gen = torch.Generator().manual_seed(0)
    members = [{k: torch.randn(6, 5, generator=gen) for k in ("a", "b")} for _ in range(3)]
    init = {"a": torch.zeros(6, 5), "b": torch.zeros(6, 5)}
    merged = merge_adapters(members, method="dare_linear", init=init, drop_rate=0.5, merge_seed=7)
    again = merge_adapters(members, method="dare_linear", init=init, drop_rate=0.5, merge_seed=7)
    reordered = merge_adapters([{"b": m["b"], "a": m["a"]} for m in members], method="dare_linear",
                               init=init, drop_rate=0.5, merge_seed=7)
    only_b = merge_adapters([{"b": m["b"]} for m in members], method="dare_linear",
                            init={"b": init["b"]}, drop_rate=0.5, merge_seed=7)
    other_seed = merge_adapters(members, method="dare_linear", init=init, drop_rate=0.5, merge_seed=8)
    for key in ("a", "b"):
        assert torch.equal(merged[key], again[key]) and torch.equal(merged[key], reordered[key])
    assert torch.equal(merged["b"], only_b["b"])
    assert not torch.equal(merged["a"], other_seed["a"])
    assert dare_seed(7, "a", 0) != dare_seed(7, "a", 1) != dare_seed(7, "b", 1)


def test_read_only_numpy_backed_inputs_are_not_written():
    arrays = [np.array(m["w"].numpy()) for m in MEMBERS] + [np.array(INIT["w"].numpy())]
    for a in arrays:
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [{"w": torch.from_numpy(a)} for a in arrays]
    before = [a.copy() for a in arrays]
    for method, params in [("task_arithmetic", {}), ("ties", {"density": 1.0}), ("dare_linear", {"drop_rate": 0.0}),
                           ("dare_ties", {"drop_rate": 0.3})]:
        out = merge_adapters(tensors[:3], method=method, init=tensors[3], **params)
        out["w"] += 100  # the result is a new tensor, never a view of an input
    merge_adapters(tensors[:3], method="average")
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


def test_half_precision_members_keep_their_dtype_and_accumulate_in_float32():
    half = [{"w": m["w"].half()} for m in MEMBERS]
    out = merge_adapters(half, method="ties", init={"w": INIT["w"].half()}, density=1.0)
    assert out["w"].dtype == torch.float16
    full = merge_adapters(MEMBERS, method="ties", init=INIT, density=1.0)
    torch.testing.assert_close(out["w"], full["w"].half(), atol=0, rtol=0)


# PEFT's merge_utils as the reference, on random tensors --------------------------------------


def _random_adapters(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"layer.0.down.weight": (16, 32), "layer.0.down.bias": (16,), "layer.1.up.weight": (32, 16)}
    init = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    members = [{k: init[k] + torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()} for _ in range(n)]
    return members, init


WEIGHTS = [0.4, 0.1, 0.3, 0.2]  # sum 1: ours normalises, PEFT takes them raw


def test_trim_matches_peft_magnitude_prune():
    members, init = _random_adapters()
    for key in init:
        deltas = [m[key] - init[key] for m in members]
        for density in (0.25, 0.5):
            for d in deltas:
                torch.testing.assert_close(trim_by_magnitude(d, density), peft.prune(d, density, "magnitude"),
                                           atol=0, rtol=0)
            ours = torch.tensordot(torch.tensor(WEIGHTS), torch.stack([trim_by_magnitude(d, density) for d in deltas]),
                                   dims=1)
            torch.testing.assert_close(ours, peft.magnitude_prune(deltas, torch.tensor(WEIGHTS), density),
                                       atol=1e-6, rtol=0)


def test_drop_and_rescale_draws_peft_random_prunings_mask():
    # Same seed, same bernoulli draw: our CPU generator seeded with s and PEFT's global one after manual_seed(s).
    delta = torch.randn(64, 48)
    torch.manual_seed(1234)
    reference = peft.prune(delta, 1 - 0.6, "random", rescale=True)
    torch.testing.assert_close(drop_and_rescale(delta, 0.6, seed=1234), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_task_arithmetic_and_ties_match_peft(lam):
    members, init = _random_adapters()
    w = torch.tensor(WEIGHTS)
    ta = merge_adapters(members, method="task_arithmetic", weights=WEIGHTS, init=init, lam=lam)
    ties_uniform = merge_adapters(members, method="ties", init=init, density=0.5, lam=lam)
    ties_weighted = merge_adapters(members, method="ties", weights=WEIGHTS, init=init, density=0.5, lam=lam)
    for key in init:
        deltas = [m[key] - init[key] for m in members]
        torch.testing.assert_close(ta[key], init[key] + lam * peft.task_arithmetic(deltas, w), atol=1e-6, rtol=0)
        # Equal weights: PEFT's ties with weights 1 is the disjoint mean, as ours.
        expected = init[key] + lam * peft.ties(deltas, torch.ones(4), density=0.5)
        torch.testing.assert_close(ties_uniform[key], expected, atol=1e-6, rtol=0)
        # Unequal weights: PEFT's own pruning and sign election on the weighted deltas, then
        # the weighted mean (PEFT's disjoint_merge divides by the count instead; see module doc).
        trimmed = torch.stack([peft.prune(d, 0.5, "magnitude") for d in deltas])
        weighted = trimmed * w.view(-1, *[1] * (trimmed.dim() - 1))
        agree = peft.calculate_majority_sign_mask(weighted, method="total")
        mass = (w.view(-1, *[1] * (trimmed.dim() - 1)) * agree * (weighted != 0)).sum(0)
        mean = (weighted * agree).sum(0) / mass.clamp(min=1e-30)
        torch.testing.assert_close(ties_weighted[key], init[key] + lam * mean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("drop_rate", [0.3, 0.9])
def test_dare_linear_and_dare_ties_match_peft_given_the_same_masks(drop_rate):
    # PEFT's dare_* draw all members' masks from the global RNG in one sequence; ours draws
    # member i's mask for parameter key from dare_seed(seed, key, i). So we let PEFT's own
    # random_pruning draw each member's mask after torch.manual_seed(dare_seed(...)), and
    # hand those pruned deltas to PEFT's dare_linear/dare_ties with density 1.0, where its
    # prune() is the identity: PEFT's formula, on exactly the masks ours drew.
    members, init = _random_adapters(seed=1)
    w = torch.tensor(WEIGHTS)
    linear = merge_adapters(members, method="dare_linear", weights=WEIGHTS, init=init, drop_rate=drop_rate,
                            merge_seed=5)
    tied = merge_adapters(members, method="dare_ties", init=init, drop_rate=drop_rate, merge_seed=5, lam=1.5)
    for key in init:
        pruned = []
        for i, m in enumerate(members):
            torch.manual_seed(dare_seed(5, key, i))
            pruned.append(peft.prune(m[key] - init[key], 1 - drop_rate, "random", rescale=True))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The density 1.0 is greater than or equal to 1")
            expected_linear = peft.dare_linear(pruned, w, density=1.0)
            expected_ties = peft.dare_ties(pruned, torch.ones(4), density=1.0)
        torch.testing.assert_close(linear[key], init[key] + expected_linear, atol=1e-6, rtol=0)
        torch.testing.assert_close(tied[key], init[key] + 1.5 * expected_ties, atol=1e-6, rtol=0)


def test_elect_and_merge_is_zero_where_no_member_agrees():
    deltas = torch.tensor([[0.0, 2.0], [0.0, -2.0]])
    torch.testing.assert_close(elect_and_merge(deltas, torch.tensor([0.5, 0.5])), torch.tensor([0.0, 2.0]))


def test_registry_says_which_methods_need_init_and_which_parameters_they_take():
    assert list(MERGE_OPERATORS) == ["average", "task_arithmetic", "ties", "dare_linear", "dare_ties"]
    assert [m.name for m in MERGE_OPERATORS.values() if not m.needs_init] == ["average"]
    assert MERGE_OPERATORS["ties"].parameters == ("density", "lam")
    assert MERGE_OPERATORS["dare_ties"].parameters == ("drop_rate", "lam", "merge_seed")


# Bad input ---------------------------------------------------------------------------------

BAD = [
    ({"method": "soup"}, "merge method must be one of ['average', 'task_arithmetic', 'ties', 'dare_linear', "
                         "'dare_ties'], got 'soup'"),
    ({"method": "ties", "init": INIT}, "merge method 'ties' needs density"),
    ({"method": "ties", "init": INIT, "density": 0.0}, "density must be in (0, 1], got 0.0"),
    ({"method": "ties", "init": INIT, "density": 1.5}, "density must be in (0, 1], got 1.5"),
    ({"method": "ties", "init": INIT, "density": True}, "density must be in (0, 1], got True"),
    ({"method": "dare_linear", "init": INIT}, "merge method 'dare_linear' needs drop_rate"),
    ({"method": "dare_ties", "init": INIT, "drop_rate": 1.0}, "drop_rate must be in [0, 1)"),
    ({"method": "dare_ties", "init": INIT, "drop_rate": -0.1}, "got -0.1"),
    ({"method": "task_arithmetic", "init": INIT, "lam": 0}, "lam must be a finite number > 0, got 0"),
    ({"method": "task_arithmetic", "init": INIT, "lam": -1.0}, "lam must be a finite number > 0, got -1.0"),
    ({"method": "task_arithmetic", "init": INIT, "lam": float("nan")}, "got nan"),
    ({"method": "task_arithmetic", "init": INIT, "lam": float("inf")}, "got inf"),
    ({"method": "task_arithmetic", "init": INIT, "density": 0.5}, "density=0.5 does not apply to merge method "
                                                                  "'task_arithmetic'; it takes ['lam']"),
    ({"method": "average", "lam": 2.0}, "lam=2.0 does not apply to merge method 'average'; it takes no parameters"),
    ({"method": "ties", "init": INIT, "density": 0.5, "merge_seed": 1}, "merge_seed=1 does not apply to merge method 'ties'"),
    ({"method": "average", "init": INIT}, "merge method 'average' does not use init"),
    ({"method": "task_arithmetic"}, "merge method 'task_arithmetic' merges deltas from the adapters' shared "
                                    "initialisation: pass init"),
    ({"method": "task_arithmetic", "init": {"v": torch.zeros(4)}}, "init does not match the members: parameter 'v'"),
    ({"method": "task_arithmetic", "init": {"w": torch.zeros(5)}}, "init has shape (5,) for parameter 'w'"),
    ({"method": "task_arithmetic", "init": INIT, "weights": [1, 2]}, "weights has 2 entries for 3 members"),
    ({"method": "task_arithmetic", "init": INIT, "weights": [1, -1, 1]}, "got [1, -1, 1]"),
    ({"method": "average", "weights": [0, 0, 0]}, "with a positive sum, got [0, 0, 0]"),
    ({"method": "dare_linear", "init": INIT, "drop_rate": 0.5, "merge_seed": 1.5}, "merge_seed must be an integer, got 1.5"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_names_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(SpecError) as info:
        merge_adapters(MEMBERS, **kwargs)
    assert message in str(info.value)


def test_members_with_different_shapes_are_refused():
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(3,\) in member 1"):
        merge_adapters([MEMBERS[0], {"w": torch.zeros(3)}], method="ties", init=INIT, density=0.5)


def test_trim_breaks_ties_in_magnitude_by_position():
    torch.testing.assert_close(trim_by_magnitude(torch.tensor([[0.5, 1.0], [-1.0, 1.0]]), 0.5),
                               torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), atol=0, rtol=0)
    # density * n = 0.3: the largest entry is kept rather than the whole tensor erased
    torch.testing.assert_close(trim_by_magnitude(torch.tensor([2.0, -1.0, 3.0]), 0.1), torch.tensor([0.0, 0.0, 3.0]))


@pytest.mark.parametrize(("n", "density", "expected"), [(6144, 0.2, 1228), (10, 0.25, 2), (10, 0.29, 2), (3, 0.1, 1),
                                                         (4, 0.5, 2), (7, 1.0, 7), (1, 0.01, 1)])
def test_ties_keeps_the_floor_of_density_times_n_and_never_nothing(n, density, expected):
    assert kept_count(density, n) == expected
    delta = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert int((trim_by_magnitude(delta, density) != 0).sum()) == expected


@pytest.mark.parametrize(("n", "density"), [(6144, 0.2), (1000, 0.123), (37, 0.3)])
def test_trim_equals_peft_where_density_times_n_is_not_whole(n, density):
    # Distinct magnitudes (no ties): PEFT's int(density * n) and ours keep the same entries.
    delta = torch.randn(n, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(trim_by_magnitude(delta, density), peft.magnitude_based_pruning(delta, density),
                               atol=0, rtol=0)
