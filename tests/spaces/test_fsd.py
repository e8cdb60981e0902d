"""Hand-computed cases for the fraction of sign difference (FSD) and its measures."""

from __future__ import annotations

import pytest
import torch

from spaces.fsd import (
    FSD_MEASURES,
    SignIndex,
    any_conflict_fraction,
    fraction_sign_difference,
    fsd_matrix,
    layer_of,
    mean_pairwise_fsd,
    per_layer_fsd,
    sign_vector,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("name, layer", [
    ("bert.encoder.layer.3.output.adapters.x.adapter_down.0.weight", "layer.3"),
    ("roberta.encoder.layer.11.attention.output.adapters.a.adapter_up.bias", "layer.11"),
    ("model.layers.7.self_attn.q_proj.lora_A.weight", "layer.7"),
    ("transformer.h.2.attn.c_attn.lora_B.weight", "layer.2"),
    ("encoder.block.0.layer.1.adapter.weight", "layer.0"),
    ("blocks.5.mlp.weight", "layer.5"),
    ("bert.embeddings.adapters.x.weight", "other"),
    ("heads.x.0.weight", "other"),
    ("bert.encoder.layernorm.3.weight", "other"),
])
def test_layer_of(name, layer):
    assert layer_of(name) == layer


def test_sign_vector_uses_sorted_key_order():
    weights = {"b": t(-2.0, 0.0), "a": torch.tensor([[3.0], [-0.5]])}
    assert sign_vector(weights).tolist() == [1, -1, -1, 0]
    assert sign_vector(weights).dtype == torch.int8


@pytest.mark.parametrize("a, b, expected", [
    ([1, -2, 3, 0], [-1, -2, -3, 5], 2 / 4),  # the brief's example
    ([0, 0, 0, 0], [-1, 1, -1, 1], 0.0),  # zeros never count
    ([1, 2, 3, 4], [5, 6, 7, 8], 0.0),
    ([1, -1, 1, -1], [-1, 1, -1, 1], 1.0),
    ([1e-4, -1e-4, 1.0], [1e-4, 1e-4, -1.0], 2 / 3),  # tiny values still count
])
def test_fraction_sign_difference(a, b, expected):
    assert fraction_sign_difference({"w": t(*a)}, {"w": t(*b)}) == pytest.approx(expected)


def test_fsd_does_not_underflow_in_half_precision():
    a = {"w": torch.tensor([1e-4, 1e-4], dtype=torch.float16)}
    b = {"w": torch.tensor([-1e-4, 1e-4], dtype=torch.float16)}
    assert fraction_sign_difference(a, b) == 0.5


def test_fsd_errors_name_keys_and_shapes():
    with pytest.raises(ValueError, match="'extra'"):
        fraction_sign_difference({"w": t(1)}, {"w": t(1), "extra": t(1)})
    with pytest.raises(ValueError, match=r"'w' has shape \(2,\).*\(3,\)"):
        fraction_sign_difference({"w": t(1, 2)}, {"w": t(1, 2, 3)})


def test_per_layer_fsd():
    a = {
        "enc.layer.0.adapter.weight": t(1, 1, 1, 1),
        "enc.layer.0.adapter.bias": t(1, 1),
        "enc.layer.1.adapter.weight": t(1, -1),
        "embeddings.adapter.weight": t(1, 1, 1),
    }
    b = {
        "enc.layer.0.adapter.weight": t(-1, 1, 1, 1),  # 1 conflict
        "enc.layer.0.adapter.bias": t(-1, 0),  # 1 conflict, the zero does not count
        "enc.layer.1.adapter.weight": t(-1, 1),  # 2 conflicts
        "embeddings.adapter.weight": t(1, 1, 1),
    }
    assert per_layer_fsd(a, b) == pytest.approx({"layer.0": 2 / 6, "layer.1": 1.0, "other": 0.0})
    assert fraction_sign_difference(a, b) == pytest.approx(4 / 11)


def _random_adapters(n: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        w = {"layer.0.a": torch.randn(5, 7, generator=g), "layer.1.b": torch.randn(11, generator=g)}
        w["layer.1.b"][::3] = 0.0  # some exact zeros
        out[f"d{i}"] = w
    return out


def test_fsd_matrix_matches_pairwise_on_random_data():
    adapters = _random_adapters(5)
    names = sorted(adapters)
    signs = torch.stack([sign_vector(adapters[n]) for n in names])
    matrix = fsd_matrix(signs)
    assert matrix.dtype == torch.float64
    assert torch.equal(matrix, matrix.T)
    assert torch.all(matrix.diagonal() == 0)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                assert matrix[i, j].item() == pytest.approx(
                    fraction_sign_difference(adapters[a], adapters[b]), abs=1e-12)


@pytest.mark.parametrize("chunk_values", [None, 2**22])
def test_fsd_matrix_chunked_on_two_million_parameters(monkeypatch, chunk_values):
    import spaces.fsd as fsd

    if chunk_values is not None:  # force several chunks: accumulation across chunks is exercised
        monkeypatch.setattr(fsd, "_CHUNK_VALUES", chunk_values)
    g = torch.Generator().manual_seed(1)
    signs = torch.randint(-1, 2, (8, 2_000_000), generator=g, dtype=torch.int8)
    matrix = fsd_matrix(signs)
    assert torch.equal(matrix, matrix.T) and torch.all(matrix.diagonal() == 0)
    positive, negative = signs > 0, signs < 0
    for i in range(8):
        for j in range(i + 1, 8):
            expected = int(((positive[i] & negative[j]) | (negative[i] & positive[j])).sum()) / 2_000_000
            assert matrix[i, j].item() == pytest.approx(expected, abs=1e-12)
    # Two independent uniform signs from {-1, 0, 1} conflict with probability 2/9.
    assert matrix[0, 1].item() == pytest.approx(2 / 9, abs=0.002)


def test_fsd_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fsd_matrix(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(ValueError, match="P = 0"):
        fsd_matrix(torch.zeros(3, 0, dtype=torch.int8))


SIGNS = torch.tensor([
    [1, 1, -1, 0, 1, 0],
    [1, -1, -1, 0, 0, 0],
    [1, 1, 1, -1, -1, 0],
], dtype=torch.int8)


@pytest.mark.parametrize("idx, expected", [
    ([0, 1, 2], 3 / 6),  # positions 1 (+,-,+), 2 (-,-,+) and 4 (+,0,-); 3 has one non-zero sign
    ([0, 1], 1 / 6),  # position 1
    ([1, 2], 2 / 6),  # positions 1 and 2
    ([2], 0.0),
    ([], 0.0),
])
def test_any_conflict_fraction(idx, expected):
    assert any_conflict_fraction(fsd_matrix(SIGNS), SIGNS, idx) == pytest.approx(expected)


def test_mean_pairwise_fsd():
    matrix = fsd_matrix(SIGNS)
    # Pairwise conflicts: (0,1) 1, (0,2) 2 (positions 2 and 4), (1,2) 2.
    assert matrix[0, 1].item() == pytest.approx(1 / 6)
    assert matrix[0, 2].item() == pytest.approx(2 / 6)
    assert mean_pairwise_fsd(matrix, None, [0, 1, 2]) == pytest.approx((1 + 2 + 2) / 18)
    assert mean_pairwise_fsd(matrix, None, [2, 0]) == pytest.approx(2 / 6)
    assert mean_pairwise_fsd(matrix, None, [1]) == 0.0


# Every registered measure on the three hand-made adapters: a new measure needs its hand case.
HAND_MEASURES = {"mean_pairwise": ((1 + 2 + 2) / 18, 2 / 6), "any_conflict": (3 / 6, None)}


@pytest.mark.parametrize("measure", sorted(FSD_MEASURES))
def test_every_registered_measure_has_a_hand_computed_case(measure):
    assert measure in HAND_MEASURES, f"give the new FSD measure {measure!r} a hand-computed case"
    index = _hand_index()
    whole, pair_ca = HAND_MEASURES[measure]
    assert index.subset_fsd(["a", "b", "c"], measure=measure) == pytest.approx(whole)
    if pair_ca is not None:
        assert index.subset_fsd(["c", "a"], measure=measure) == pytest.approx(pair_ca)
    assert index.subset_fsd(["b"], measure=measure) == 0.0


def _hand_index() -> SignIndex:
    # Names given out of order on purpose: the index sorts them.
    weights = {
        "c": {"w": SIGNS[2].float()},
        "a": {"w": SIGNS[0].float()},
        "b": {"w": SIGNS[1].float()},
    }
    return SignIndex.from_weights(weights)


def test_sign_index_measures_and_row_means():
    index = _hand_index()
    assert index.names == ("a", "b", "c")
    assert index.signs.dtype == torch.int8 and tuple(index.signs.shape) == (3, 6)
    assert index.subset_fsd(["c", "a"]) == pytest.approx(2 / 6)
    assert index.subset_fsd(["a", "b", "c"], measure="any_conflict") == pytest.approx(3 / 6)
    assert index.row_means() == pytest.approx({"a": 1.5 / 6, "b": 1.5 / 6, "c": 2 / 6})


def test_sign_index_errors_name_the_bad_value():
    index = _hand_index()
    with pytest.raises(ValueError, match="'zzz'"):
        index.subset_fsd(["a", "zzz"])
    with pytest.raises(ValueError, match=r"'median'.*any_conflict.*mean_pairwise"):
        index.subset_fsd(["a", "b"], measure="median")
    with pytest.raises(ValueError, match=r"'a' and 'b'.*'w2'"):
        SignIndex.from_weights({"a": {"w": t(1)}, "b": {"w": t(1), "w2": t(1)}})
    with pytest.raises(ValueError, match=r"'w' has shape \(1,\) in 'a' but \(2,\) in 'c'"):
        SignIndex.from_weights({"a": {"w": t(1)}, "c": {"w": t(1, 2)}})


@pytest.mark.parametrize("n, p", [(2, 1), (3, 13), (5, 64), (7, 1001)])
def test_packed_any_conflict_equals_the_int8_computation(n, p):
    from spaces.fsd import any_conflict_fraction
    from spaces.signbits import PackedSigns

    gen = torch.Generator().manual_seed(n * 1000 + p)
    signs = torch.randint(-1, 2, (n, p), generator=gen, dtype=torch.int8)
    packed = PackedSigns(signs)
    for k in range(2, n + 1):
        idx = list(range(k))
        assert any_conflict_fraction(None, packed, idx) == any_conflict_fraction(None, signs, idx)
    index = SignIndex(names=[f"d{i}" for i in range(n)], signs=signs, matrix=torch.zeros(n, n, dtype=torch.float64))
    assert torch.equal(index.signs, signs)
