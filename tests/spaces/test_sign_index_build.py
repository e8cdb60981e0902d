"""The streamed sign index (bits packed per adapter, FSD counted on the bits) against a
straightforward int8 reference: stacked :func:`sign_vector` rows and their pairwise conflicts."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from spaces.fsd import SignIndex, fsd_matrix, sign_vector
from spaces.signbits import PackedSigns, pack_adapters

LAYOUT = {"layer.0.a": (5, 7), "layer.1.b": (11,), "layer.1.c": (3, 3, 2), "z.big": (35, 27)}
P = 35 + 11 + 18 + 35 * 27  # 1009: not a multiple of 64 (or of 8)


def _adapter(seed: int, layout=LAYOUT, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        w = torch.randn(shape, generator=g)
        w[torch.rand(shape, generator=g) < 0.3] = 0.0  # exact zeros: neither sign
        out[key] = w.to(dtype)
    return out


def _reference(adapters: dict[str, dict[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Names, int8 signs and the FSD matrix, counted pair by pair on the int8 signs."""
    names = sorted(adapters)
    signs = torch.stack([sign_vector(adapters[n]) for n in names])
    n, p = signs.shape
    counts = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i != j:
                counts[i, j] = int(((signs[i] * signs[j]) < 0).sum())
    return names, signs, counts / p


@pytest.mark.parametrize("n, dtype", [(2, torch.float32), (9, torch.float32), (5, torch.float16),
                                      (4, torch.bfloat16)])
def test_streamed_index_is_bit_identical_to_the_int8_reference(n, dtype):
    adapters = {f"d{(7 * i) % n}": _adapter(i, dtype=dtype) for i in range(n)}
    names, signs, matrix = _reference(adapters)
    index = SignIndex.from_weights(adapters)
    assert P % 64 and index.packed.p == P
    assert list(index.names) == names
    assert torch.equal(index.signs, signs)
    assert torch.equal(index.matrix, matrix)  # exact, not approximately
    assert torch.equal(index.matrix, fsd_matrix(signs))  # the int8 matmul path agrees bit for bit
    assert float(index.matrix[0, 1]) > 0


@pytest.mark.parametrize("p", [1, 63, 64, 65, 128, 1000])
def test_word_boundaries_and_padding(p):
    g = torch.Generator().manual_seed(p)
    signs = torch.randint(-1, 2, (6, p), generator=g, dtype=torch.int8)
    adapters = {f"d{i}": {"w": signs[i].float() * 0.5} for i in range(6)}
    index = SignIndex.from_weights(adapters)
    assert torch.equal(index.signs, signs)
    assert torch.equal(index.matrix, _reference(adapters)[2])
    # the same bits as packing the int8 matrix, padding included
    assert (index.packed.pos == PackedSigns(signs).pos).all() and (index.packed.neg == PackedSigns(signs).neg).all()


def test_conflicts_accumulate_across_word_chunks(monkeypatch):
    from spaces import signbits

    adapters = {f"d{i}": _adapter(i) for i in range(5)}
    expected = _reference(adapters)[2]
    monkeypatch.setattr(signbits, "_CHUNK_WORDS", 3)  # 16 words a row: six chunks, the last one short
    assert torch.equal(SignIndex.from_weights(adapters).matrix, expected)


def test_an_iterable_of_pairs_builds_the_same_index_holding_one_adapter_at_a_time():
    order = [3, 0, 4, 1, 2]  # out of order on purpose: the index sorts the names
    previous: list[weakref.ref] = []

    def make(i: int) -> dict[str, torch.Tensor]:
        gc.collect()
        assert all(ref() is None for ref in previous), "an earlier adapter is still held while loading the next"
        weights = _adapter(i)
        previous.append(weakref.ref(weights["z.big"]))
        return weights

    def load():  # what a store does: load one adapter, hand it over, keep no reference
        for i in order:
            yield f"d{i}", make(i)

    streamed = SignIndex.from_weights(load())
    mapped = SignIndex.from_weights({f"d{i}": _adapter(i) for i in order})
    assert streamed.names == mapped.names == ("d0", "d1", "d2", "d3", "d4")
    assert torch.equal(streamed.matrix, mapped.matrix) and torch.equal(streamed.signs, mapped.signs)
    assert len(previous) == len(order)


def test_a_mapping_is_read_once_per_adapter():
    reads: list[str] = []

    class Counting(dict):
        def __getitem__(self, name):
            reads.append(name)
            return super().__getitem__(name)

    SignIndex.from_weights(Counting({f"d{i}": _adapter(i) for i in range(4)}))
    assert reads == ["d0", "d1", "d2", "d3"]


def test_streamed_build_errors_name_the_bad_value():
    def pairs(*items):
        return iter(items)

    with pytest.raises(ValueError, match="no adapters"):
        SignIndex.from_weights(pairs())
    with pytest.raises(ValueError, match="'a' is given twice"):
        SignIndex.from_weights(pairs(("a", _adapter(0)), ("a", _adapter(1))))
    with pytest.raises(ValueError, match=r"\(name, weights\) pairs, got 'oops'"):
        SignIndex.from_weights(pairs(("a", _adapter(0)), "oops"))
    with pytest.raises(ValueError, match=r"'b' and 'a'.*'layer.1.b' is only in 'b'"):
        SignIndex.from_weights(pairs(("b", _adapter(0)), ("a", _adapter(1, {"layer.0.a": (5, 7)}))))
    with pytest.raises(ValueError, match=r"'layer.0.a' has shape \(5, 7\) in 'b' but \(7, 5\) in 'a'"):
        SignIndex.from_weights(pairs(("b", _adapter(0, {"layer.0.a": (5, 7)})), ("a", _adapter(1, {"layer.0.a": (7, 5)}))))
    with pytest.raises(ValueError, match="P = 0"):
        SignIndex.from_weights({"a": {}, "b": {}})


def test_pack_adapters_returns_sorted_names_and_bits():
    names, packed = pack_adapters([("b", {"w": torch.tensor([1.0, -2.0, 0.0])}), ("a", {"w": torch.tensor([-1.0, 0.0, 3.0])})])
    assert names == ("a", "b") and packed.shape == (2, 3) and packed.nbytes == 2 * 2 * 8
    pos, neg = packed.pos.view(np.uint8), packed.neg.view(np.uint8)  # position 0 is the first byte's top bit
    assert pos[0].tolist() == [0b00100000] + [0] * 7 and neg[0].tolist() == [0b10000000] + [0] * 7
    assert pos[1].tolist() == [0b10000000] + [0] * 7 and neg[1].tolist() == [0b01000000] + [0] * 7
