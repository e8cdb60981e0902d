"""EMR-Merging, TALL masks and 1-bit packing against literal implementations of the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spaces.domain_masks import (
    TALL_LAMBDAS,
    choose_on_validation,
    emr_elect,
    emr_masks,
    emr_rescalers,
    masks_bytes,
    member_masks,
    pack_mask,
    packed_bytes,
    rescaler_candidates,
    tall_masks,
    unpack_mask,
)

# ------------------------------------------------------------ literal versions, entry by entry


def literal_emr(taus: list[np.ndarray]):
    """EMR-Merging as the paper writes it, one entry at a time, over flat task vectors."""
    n, size = len(taus), taus[0].size
    unified = np.zeros(size)
    for j in range(size):
        total = sum(t[j] for t in taus)
        sign = 1.0 if total > 0 else (-1.0 if total < 0 else 0.0)
        agreeing = [abs(t[j]) for t in taus if t[j] * sign > 0]
        unified[j] = sign * max(agreeing) if agreeing else 0.0
    masks = [np.array([taus[i][j] * unified[j] > 0 for j in range(size)]) for i in range(n)]
    rescalers = []
    for i in range(n):
        num = sum(abs(taus[i][j]) for j in range(size))
        den = sum(abs(masks[i][j] * unified[j]) for j in range(size))
        rescalers.append(num / den if den > 0 else 1.0)
    return unified, masks, rescalers


def literal_tall(taus: list[np.ndarray], merged: np.ndarray, lambdas: list[float]):
    return [np.array([abs(t[j]) >= lam * abs(merged[j] - t[j]) for j in range(t.size)]) for t, lam in zip(taus, lambdas)]


SHAPES = {"down.weight": (3, 5), "down.bias": (3,), "up.weight": (5, 3), "up.bias": (5,)}


def random_deltas(members: int, seed: int, zeros: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in SHAPES.items():
        d = torch.randn((members,) + shape, generator=g, dtype=torch.float64)
        if zeros:
            d = torch.where(torch.rand(d.shape, generator=g, dtype=torch.float64) < zeros, 0.0, d)
        out[key] = d
    return out


def flat_member(deltas: dict[str, torch.Tensor], i: int) -> np.ndarray:
    return np.concatenate([deltas[k][i].reshape(-1).numpy() for k in SHAPES])


def flat(values: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([values[k].reshape(-1).numpy() for k in SHAPES])


# ------------------------------------------------------------ EMR


@pytest.mark.parametrize("members,seed,zeros", [(1, 0, 0.0), (2, 1, 0.0), (3, 2, 0.3), (5, 3, 0.0), (8, 4, 0.5)])
def test_emr_matches_the_papers_formulas_entry_by_entry(members, seed, zeros):
    deltas = random_deltas(members, seed, zeros)
    unified = emr_elect(deltas)
    masks = emr_masks(deltas, unified)
    rescalers = emr_rescalers(deltas, unified, masks)
    want_unified, want_masks, want_rescalers = literal_emr([flat_member(deltas, i) for i in range(members)])
    np.testing.assert_array_equal(flat(unified), want_unified)
    for i in range(members):
        np.testing.assert_array_equal(flat(member_masks(masks, i)), want_masks[i])
    np.testing.assert_allclose(rescalers, want_rescalers, rtol=1e-12)


def test_emr_one_member_gives_back_its_own_delta_exactly():
    deltas = random_deltas(1, 7, zeros=0.2)
    unified = emr_elect(deltas)
    masks = emr_masks(deltas, unified)
    (rescaler,) = emr_rescalers(deltas, unified, masks)
    assert rescaler == pytest.approx(1.0, abs=1e-15)
    for key, d in deltas.items():
        assert torch.equal(masks[key][0] * unified[key], d[0])


@pytest.mark.parametrize("column,want_unified,want_masks", [
    # an exact tie elects no sign: the entry is 0 and no mask keeps it (the paper's sgn(0) = 0)
    ([1.0, -1.0], 0.0, [False, False]),
    # zeros: a member at 0 is never kept, whatever the sign
    ([0.0, 2.0], 2.0, [False, True]),
    ([0.0, 0.0], 0.0, [False, False]),
    # the sum elects the sign; the largest agreeing magnitude is kept, not the largest overall
    ([3.0, -1.0, -1.5], 3.0, [True, False, False]),
    ([-3.0, 1.0, 1.5, 1.0], 1.5, [False, True, True, True]),
    ([-3.0, 2.0, 2.0], 2.0, [False, True, True]),
])
def test_emr_edge_cases(column, want_unified, want_masks):
    deltas = {"w": torch.tensor(column, dtype=torch.float64).reshape(-1, 1)}
    unified = emr_elect(deltas)
    assert unified["w"].item() == want_unified
    assert emr_masks(deltas, unified)["w"].reshape(-1).tolist() == want_masks


def test_emr_rescaler_of_a_member_the_mask_drops_entirely_is_one():
    deltas = {"w": torch.tensor([[5.0, 5.0], [-1.0, -1.0]], dtype=torch.float64)}
    unified = emr_elect(deltas)
    masks = emr_masks(deltas, unified)
    assert emr_rescalers(deltas, unified, masks) == [1.0, 1.0]  # member 0: 10/10; member 1: nothing kept


def test_emr_rescaler_sums_over_all_parameters_not_per_tensor():
    # Two parameters of very different sizes: the paper's sum and the reference code's per-tensor means differ.
    deltas = {"big": torch.tensor([[1.0] * 8, [3.0] * 8]), "small": torch.tensor([[4.0], [1.0]])}
    unified = emr_elect(deltas)  # big: 3 everywhere, small: 4
    masks = emr_masks(deltas, unified)
    paper = emr_rescalers(deltas, unified, masks)
    code = emr_rescalers(deltas, unified, masks, reduction="tensor_means")
    assert paper[0] == pytest.approx((8 * 1 + 4) / (8 * 3 + 4))
    # the reference code: sum over tensors of mean|tau_t| / sum over tensors of mean|M_t * tau_uni|
    assert code[0] == pytest.approx((1 + 4) / (3 + 4))
    assert paper[0] != pytest.approx(code[0])


def test_emr_matches_the_reference_code_away_from_ties():
    """The reference emr_merge (harveyhuang18/EMR_Merging), copied loop for loop, on deltas without ties."""
    deltas = random_deltas(4, 11)
    sums = {n: d.mean(0) for n, d in deltas.items()}
    scales, new_scales = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    ref_unified, ref_masks = {}, {}
    for n in sums:
        flag = (sums[n] > 0) * 2 - 1
        param_max = torch.zeros_like(deltas[n][0])
        ref_masks[n] = []
        for m in range(4):
            param = deltas[n][m]
            mask = (param * flag) > 0
            ref_masks[n].append(mask)
            param_abs = torch.abs(mask * param)
            param_max = torch.where(param_abs > param_max, param_abs, param_max)
            scales[m] += torch.mean(torch.abs(param))
        ref_unified[n] = param_max * flag
    for m in range(4):
        for n in ref_unified:
            new_scales[m] += torch.mean(torch.abs(ref_unified[n] * ref_masks[n][m]))
    unified = emr_elect(deltas)
    masks = emr_masks(deltas, unified)
    for n in deltas:
        assert torch.equal(unified[n], ref_unified[n].to(unified[n].dtype))
        assert torch.equal(masks[n], torch.stack(ref_masks[n]))
    np.testing.assert_allclose(emr_rescalers(deltas, unified, masks, reduction="tensor_means"),
                               (scales / new_scales).tolist(), rtol=1e-12)


# ------------------------------------------------------------ TALL


@pytest.mark.parametrize("members,seed,lambdas", [
    (1, 0, [0.4]), (2, 1, [0.2, 0.6]), (3, 2, [0.0, 0.5, 1.0]), (5, 3, [0.3] * 5), (4, 4, [10.0, 0.1, 0.4, 2.0]),
])
def test_tall_masks_match_the_papers_formula_entry_by_entry(members, seed, lambdas):
    deltas = random_deltas(members, seed, zeros=0.2)
    merged = {k: d.sum(dim=0) * 0.7 for k, d in deltas.items()}  # a scaled task-arithmetic delta
    masks = tall_masks(deltas, merged, lambdas)
    want = literal_tall([flat_member(deltas, i) for i in range(members)], flat(merged), lambdas)
    for i in range(members):
        np.testing.assert_array_equal(flat(member_masks(masks, i)), want[i])


def test_tall_one_lambda_for_all_and_the_reference_code_away_from_equality():
    deltas = random_deltas(3, 5)
    merged = {k: d.sum(dim=0) for k, d in deltas.items()}
    ours = tall_masks(deltas, merged, 0.4)
    # nik-dim/tall_masks generate_task_masks: |theta_0 - theta_t| > |theta_mt - theta_t| * lambda
    flat_ptm = torch.zeros(flat(merged).size, dtype=torch.float64)
    tvs = torch.stack([torch.from_numpy(flat_member(deltas, i)) for i in range(3)])
    flat_ft = flat_ptm + tvs
    ref = (flat_ptm - flat_ft).abs() > ((flat_ptm + tvs.sum(0)) - flat_ft).abs() * 0.4
    got = torch.stack([torch.from_numpy(flat(member_masks(ours, i))) for i in range(3)])
    assert torch.equal(got, ref)


def test_tall_one_member_keeps_everything_and_the_mask_grows_as_lambda_falls():
    deltas = random_deltas(1, 3, zeros=0.3)
    merged = {k: d[0] for k, d in deltas.items()}
    assert all(bool(m.all()) for m in tall_masks(deltas, merged, 0.5).values())
    deltas = random_deltas(4, 9)
    merged = {k: d.mean(dim=0) for k, d in deltas.items()}
    kept = [sum(int(m.sum()) for m in tall_masks(deltas, merged, lam).values()) for lam in TALL_LAMBDAS]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]


@pytest.mark.parametrize("call,message", [
    (lambda d, m: tall_masks(d, m, [0.5]), "lambdas has 1 entries for 2 members"),
    (lambda d, m: tall_masks(d, m, -0.1), "got -0.1"),
    (lambda d, m: tall_masks(d, m, float("nan")), "got nan"),
    (lambda d, m: tall_masks(d, {"w": m["w"][:1]}, 0.5), "merged['w'] has shape (1,)"),
    (lambda d, m: tall_masks(d, {"v": m["w"]}, 0.5), "same parameters"),
    (lambda d, m: emr_elect({}), "deltas is empty"),
    (lambda d, m: emr_elect({"w": d["w"], "b": torch.zeros(3, 1)}), "'b'] has 3 members"),
    (lambda d, m: emr_elect({"w": torch.zeros(2, 2, dtype=torch.int64)}), "must be a float tensor"),
    (lambda d, m: emr_rescalers(d, m, {"w": torch.ones(2, 2)}), "must be a bool tensor"),
    (lambda d, m: emr_rescalers(d, m, emr_masks(d, m), reduction="mean"), "got 'mean'"),
])
def test_bad_input_is_named(call, message):
    deltas = {"w": torch.tensor([[1.0, -2.0], [3.0, 4.0]])}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        call(deltas, emr_elect(deltas))


# ------------------------------------------------------------ packing


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5), (2, 3, 4), (768, 48), (13, 1, 3)])
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_packed_masks_round_trip_exactly_and_match_numpy(shape, density):
    g = torch.Generator().manual_seed(math.prod(shape) + int(density * 10))
    mask = torch.rand(shape, generator=g) < density
    packed, got_shape = pack_mask(mask)
    assert got_shape == shape and packed.dtype == torch.uint8
    assert packed.numel() == packed_bytes(mask.numel()) == math.ceil(mask.numel() / 8)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.reshape(-1).numpy()))
    back = unpack_mask(packed, shape)
    assert back.dtype == torch.bool and tuple(back.shape) == shape
    assert torch.equal(back, mask)


def test_one_bit_per_parameter_is_a_thirty_second_of_float32():
    masks = {k: torch.ones(s, dtype=torch.bool) for k, s in {"a": (768, 48), "b": (48,), "c": (3,)}.items()}
    floats = sum(m.numel() for m in masks.values()) * 4
    assert masks_bytes(masks) == 768 * 48 // 8 + 6 + 1
    assert masks_bytes(masks) <= floats / 32 + len(masks)


@pytest.mark.parametrize("packed,shape,message", [
    (torch.zeros(2, dtype=torch.uint8), (9,), None),
    (torch.zeros(1, dtype=torch.uint8), (9,), "packs into 2 bytes, got 1"),
    (torch.zeros(2, dtype=torch.int32), (9,), "1-D uint8"),
    (torch.zeros(1, 2, dtype=torch.uint8), (9,), "1-D uint8"),
])
def test_unpack_checks_its_input(packed, shape, message):
    if message is None:
        assert not unpack_mask(packed, shape).any()
        return
    with pytest.raises(ValueError, match=message):
        unpack_mask(packed, shape)


def test_pack_refuses_a_non_boolean_mask():
    with pytest.raises(ValueError, match="must be a bool tensor, got torch.float32"):
        pack_mask(torch.ones(3))


# ------------------------------------------------------------ choosing on validation


@pytest.mark.parametrize("scores,start,want", [
    ({0.5: 0.7, 1.0: 0.8, 1.5: 0.75}, 1.0, 1.0),
    ({0.5: 0.9, 1.0: 0.8, 1.5: 0.75}, 1.0, 0.5),
    ({0.5: 0.8, 1.0: 0.7, 1.5: 0.8}, 1.0, 0.5),  # a tie at equal distance: the smaller one
    ({0.5: 0.8, 1.0: 0.7, 1.25: 0.8}, 1.0, 1.25),  # a tie: the one closest to the start
    ({0.5: 0.8, 1.0: 0.8, 2.0: 0.8}, 1.0, 1.0),
    ({0.5: float("nan"), 1.0: 0.1, 2.0: float("nan")}, 2.0, 1.0),  # NaN never wins
    ({0.5: float("nan")}, 2.0, 2.0),  # nothing scored: the start
])
def test_choose_on_validation(scores, start, want):
    called = []
    chosen, seen = choose_on_validation(lambda c: called.append(c) or scores[c], list(scores)[::-1], start)
    assert chosen == want
    assert called == sorted(scores)
    assert seen.keys() == scores.keys()


def test_rescaler_candidates_are_around_the_start():
    got = rescaler_candidates(1.6)
    assert 1.6 in got and got == sorted(got) and min(got) == pytest.approx(0.8) and max(got) == pytest.approx(3.2)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="start must be"):
            rescaler_candidates(bad)
    with pytest.raises(ValueError, match="candidates is empty"):
        choose_on_validation(lambda c: 0.0, [], 1.0)
