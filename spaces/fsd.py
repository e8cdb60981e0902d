"""Fraction of sign difference (FSD) between adapters (Nguyen & Le, ACL 2024, Alg. 3).

The FSD of two adapters is the number of positions where ``θ_A ⊙ θ_B`` is negative,
divided by the number of adapter parameters; zeros never count as a conflict. Signs are
compared, never products, so tiny half-precision weights cannot underflow to zero.
Every function here takes tensors (or dicts of tensors) and returns numbers or tensors.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    AdapterWeights = Mapping[str, Mapping[str, Tensor]] | Iterable[tuple[str, Mapping[str, Tensor]]]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")

# Columns of the [N, P] sign matrix turned into float indicators at once in fsd_matrix:
# at most 2**24 values per indicator (64 MiB in float32), and never more than 2**24
# columns so that float32 sums of 0/1 products stay exact integers.
_CHUNK_VALUES = 2**24
# uint64 words of every bit-row that PackedSigns.conflict_counts ANDs at once: 32 KiB a
# row, so a block of all rows stays in the cache while each row is compared to the others.
_CHUNK_WORDS = 4096


def layer_of(param_name: str) -> str:
    """Returns the transformer layer a parameter belongs to, e.g. ``"layer.3"``, or ``"other"``.

    ``"bert.encoder.layer.3.output.adapters.x.adapter_down.0.weight"`` -> ``"layer.3"``;
    ``layers.N``, ``h.N``, ``block.N`` and ``blocks.N`` are recognised the same way.
    """
    match = _LAYER_RE.search(param_name)
    return f"layer.{int(match.group(1))}" if match else "other"


def _check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], a_name: str = "a",
                       b_name: str = "b") -> None:
    _check_same_shapes(_shapes(a), _shapes(b), a_name, b_name)


def _shapes(weights: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in weights.items()}


def _check_same_shapes(a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]], a_name: str,
                       b_name: str) -> None:
    keys_a, keys_b = set(a), set(b)
    if keys_a != keys_b:
        first = min(keys_a ^ keys_b)
        where = a_name if first in keys_a else b_name
        raise ValueError(f"adapters {a_name!r} and {b_name!r} have different parameters: "
                         f"{first!r} is only in {where!r}")
    for key in sorted(keys_a):
        if a[key] != b[key]:
            raise ValueError(f"parameter {key!r} has shape {a[key]} in {a_name!r} but {b[key]} in {b_name!r}")


def sign_vector(weights: Mapping[str, Tensor]) -> Tensor:
    """Returns the int8 signs (-1/0/+1) of all tensors, flattened and concatenated in sorted key order."""
    import torch

    parts = [torch.sign(weights[k].detach()).flatten().to(torch.int8) for k in sorted(weights)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int8)


def _conflicts(a: Tensor, b: Tensor) -> int:
    """The number of positions where two tensors have strictly opposite signs."""
    import torch

    return int(((torch.sign(a.detach()) * torch.sign(b.detach())) < 0).sum())


def fraction_sign_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Returns the FSD of two adapters: positions with ``a * b < 0`` over the parameter count.

    Args:
        a: one adapter's parameters by name.
        b: another adapter of the same architecture (same keys and shapes).

    Returns:
        A fraction in [0, 1].
    """
    _check_same_layout(a, b)
    n = sum(a[k].numel() for k in a)
    if n == 0:
        raise ValueError("cannot compute FSD of adapters with no parameters")
    return sum(_conflicts(a[k], b[k]) for k in a) / n


def per_layer_fsd(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """Returns the FSD restricted to each :func:`layer_of` group, keyed by layer name.

    The denominator of each entry is the number of parameters in that layer.
    """
    _check_same_layout(a, b)
    counts: dict[str, list[int]] = {}
    for key in sorted(a):
        group = counts.setdefault(layer_of(key), [0, 0])
        group[0] += _conflicts(a[key], b[key])
        group[1] += a[key].numel()
    return {layer: c / n for layer, (c, n) in counts.items() if n > 0}


def fsd_matrix(signs: Tensor | PackedSigns) -> Tensor:
    """Returns the symmetric [N, N] float64 FSD matrix (zero diagonal) of N sign vectors.

    Conflicts are counted chunk by chunk over the P columns as
    ``pos_i · neg_j + neg_i · pos_j`` with float32 matmuls, so memory stays at a few
    indicator chunks, never N*N*P; on :class:`PackedSigns`, as popcounts of the bit-rows
    (:meth:`PackedSigns.conflict_counts`, the same exact counts, much faster).

    Args:
        signs: int8 [N, P] matrix, one row per adapter (see :func:`sign_vector`), or its bits.
    """
    import torch

    if isinstance(signs, PackedSigns):
        if signs.p == 0:
            raise ValueError("cannot compute FSD of sign vectors with no parameters (P = 0)")
        counts = torch.from_numpy(signs.conflict_counts()).to(torch.float64)
        return counts / signs.p
    if signs.dim() != 2:
        raise ValueError(f"signs must be a 2-D [N, P] matrix, got shape {tuple(signs.shape)}")
    n, p = signs.shape
    if p == 0:
        raise ValueError("cannot compute FSD of sign vectors with no parameters (P = 0)")
    chunk = max(1, min(_CHUNK_VALUES, _CHUNK_VALUES // max(n, 1)))
    counts = torch.zeros(n, n, dtype=torch.float64, device=signs.device)
    for start in range(0, p, chunk):
        block = signs[:, start:start + chunk]
        pos = (block > 0).to(torch.float32)
        neg = (block < 0).to(torch.float32)
        cross = pos @ neg.T
        counts += (cross + cross.T).to(torch.float64)
    counts.fill_diagonal_(0.0)
    return (counts / p).cpu()


class PackedSigns:
    """Sign vectors packed as bits: one bit-row of "> 0" and one of "< 0" per adapter.

    Four times smaller than int8 signs, and a subset's ``any_conflict`` is a few bitwise
    ORs, one AND and a popcount over P/8 bytes per member: the pre-filter's hot path.
    """

    def __init__(self, signs: Tensor) -> None:
        import numpy as np

        if signs.dim() != 2:
            raise ValueError(f"signs must be a 2-D [N, P] matrix, got shape {tuple(signs.shape)}")
        array = signs.numpy()
        self.p = int(signs.shape[1])
        # Rows padded to whole 64-bit words (the padding bits are 0: never a conflict),
        # so that ORs and popcounts run on uint64, eight bytes at a time.
        self.pos = self._words(np.packbits(array > 0, axis=1))
        self.neg = self._words(np.packbits(array < 0, axis=1))

    @classmethod
    def from_words(cls, pos: np.ndarray, neg: np.ndarray, p: int) -> PackedSigns:
        """Wraps [N, ceil(P/64)] uint64 bit-rows of "> 0" and "< 0" (padding bits 0), as built
        by :class:`SignPacker`, without copying them."""
        import numpy as np

        words = (p + 63) // 64
        for name, bits in (("pos", pos), ("neg", neg)):
            if bits.dtype != np.uint64 or bits.ndim != 2 or bits.shape != (pos.shape[0], words):
                raise ValueError(f"{name} must be a uint64 [N, {words}] array for P = {p}, got "
                                 f"{bits.dtype} {bits.shape}")
        packed = cls.__new__(cls)
        packed.pos, packed.neg, packed.p = pos, neg, int(p)
        return packed

    @staticmethod
    def _words(bits):
        import numpy as np

        pad = (-bits.shape[1]) % 8
        if pad:
            bits = np.concatenate([bits, np.zeros((bits.shape[0], pad), dtype=np.uint8)], axis=1)
        return np.ascontiguousarray(bits).view(np.uint64)

    def __len__(self) -> int:
        return len(self.pos)

    @property
    def shape(self) -> tuple[int, int]:
        """(N, P), as the int8 sign matrix it packs."""
        return (len(self.pos), self.p)

    @property
    def nbytes(self) -> int:
        return int(self.pos.nbytes + self.neg.nbytes)

    def conflict_counts(self) -> np.ndarray:
        """Returns the symmetric int64 [N, N] counts of positions where two rows have strictly
        opposite signs (zero diagonal): ``popcount((pos_i & neg_j) | (neg_i & pos_j))``.

        The two ANDs never share a bit (a position is not both > 0 and < 0 in row i), so
        one popcount of their OR counts both. Rows are compared a block of words at a time.
        """
        import numpy as np

        n, words = self.pos.shape
        counts = np.zeros((n, n), dtype=np.int64)
        # Reused buffers; a chunk's count per pair is at most 64 * _CHUNK_WORDS: exact in uint32.
        both, other = np.empty((2, n, _CHUNK_WORDS), np.uint64)
        bits, sums = np.empty((n, _CHUNK_WORDS), np.uint8), np.empty(n, np.uint32)
        for start in range(0, words, _CHUNK_WORDS):
            pos, neg = self.pos[:, start:start + _CHUNK_WORDS], self.neg[:, start:start + _CHUNK_WORDS]
            for i in range(n - 1):
                rows, width = n - 1 - i, pos.shape[1]
                b, o, c = both[:rows, :width], other[:rows, :width], bits[:rows, :width]
                np.bitwise_and(pos[i], neg[i + 1:], out=b)
                np.bitwise_and(neg[i], pos[i + 1:], out=o)
                np.bitwise_or(b, o, out=b)
                np.bitwise_count(b, out=c)
                counts[i, i + 1:] += c.sum(axis=1, dtype=np.uint32, out=sums[:rows])
        return counts + counts.T

    def any_conflict_count(self, idx: Sequence[int]) -> int:
        """Positions where some member of ``idx`` is > 0 and another is < 0."""
        import numpy as np

        idx = list(idx)
        pos, neg = self.pos[idx[0]].copy(), self.neg[idx[0]].copy()
        for i in idx[1:]:
            np.bitwise_or(pos, self.pos[i], out=pos)
            np.bitwise_or(neg, self.neg[i], out=neg)
        np.bitwise_and(pos, neg, out=pos)
        return int(np.bitwise_count(pos).sum(dtype=np.int64))


class SignPacker:
    """Packs adapters of one layout into bit-rows, one adapter at a time: the int8 signs
    of all adapters never exist, only two reused boolean buffers of P bytes."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        import torch

        self.keys = sorted(shapes)
        self.p = sum(math.prod(shapes[k]) for k in self.keys)
        if self.p == 0:
            raise ValueError("cannot compute FSD of sign vectors with no parameters (P = 0)")
        # Padded to whole 64-bit words with False: the padding bits are 0, never a conflict.
        self._pos = torch.zeros(-(-self.p // 64) * 64, dtype=torch.bool)
        self._neg = torch.zeros_like(self._pos)

    def pack(self, weights: Mapping[str, Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Returns one adapter's uint64 bit-rows of "> 0" and "< 0" (sorted key order, as
        :func:`sign_vector`); the caller has checked its layout."""
        import numpy as np
        import torch

        start = 0
        for key in self.keys:
            flat = weights[key].detach().reshape(-1).cpu()
            end = start + flat.numel()
            torch.gt(flat, 0, out=self._pos[start:end])
            torch.lt(flat, 0, out=self._neg[start:end])
            start = end
        return (np.packbits(self._pos.numpy()).view(np.uint64),
                np.packbits(self._neg.numpy()).view(np.uint64))


def _adapter_pairs(weights: AdapterWeights) -> Iterable[tuple[str, Mapping[str, Tensor]]]:
    if isinstance(weights, Mapping):  # read in sorted order, each adapter once
        return ((name, weights[name]) for name in sorted(weights))
    return iter(weights)


def pack_adapters(weights: AdapterWeights) -> tuple[tuple[str, ...], PackedSigns]:
    """Returns the sorted adapter names and their :class:`PackedSigns`, reading each adapter once.

    Args:
        weights: adapter weights by name, or an iterable (e.g. a generator) of
            ``(name, weights)`` pairs, so that one adapter at a time needs to be in memory.

    Raises:
        ValueError: no adapters, a name given twice, or parameter names or shapes that differ
            from the first adapter's.
    """
    import numpy as np

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first, shapes, packer = "", {}, None
    for pair in _adapter_pairs(weights):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], Mapping)):
            raise ValueError(f"adapters must be a mapping name -> weights or (name, weights) pairs, got {pair!r:.80}")
        name, adapter = pair
        if name in rows:
            raise ValueError(f"adapter {name!r} is given twice; each adapter needs its own name")
        if packer is None:
            first, shapes = name, _shapes(adapter)
            packer = SignPacker(shapes)
        else:
            _check_same_shapes(shapes, _shapes(adapter), first, name)
        rows[name] = packer.pack(adapter)
        del pair, adapter  # before the next one is loaded: one adapter's weights at a time
    if packer is None:
        raise ValueError("cannot build a SignIndex from no adapters")
    names = tuple(sorted(rows))
    words = len(rows[first][0])
    pos, neg = np.empty((len(names), words), np.uint64), np.empty((len(names), words), np.uint64)
    for i, name in enumerate(names):  # each row freed once copied: the bits are held once
        pos[i], neg[i] = rows.pop(name)
    return names, PackedSigns.from_words(pos, neg, packer.p)


def mean_pairwise_fsd(matrix: Tensor, signs: Tensor | PackedSigns | None, idx: Sequence[int]) -> float:
    """Returns the mean FSD over the unordered pairs of ``idx`` (0.0 for fewer than two members)."""
    import torch

    idx = list(idx)
    if len(idx) < 2:
        return 0.0
    sub = matrix[idx][:, idx]
    rows, cols = torch.triu_indices(len(idx), len(idx), offset=1)
    return float(sub[rows, cols].mean())


def any_conflict_fraction(matrix: Tensor, signs: Tensor | PackedSigns | None, idx: Sequence[int]) -> float:
    """Returns the fraction of positions where some member is > 0 and another is < 0.

    Zeros are ignored: a position is a conflict only when the non-zero signs of the
    members are not all equal. 0.0 for a single member. ``signs`` is the int8 [N, P]
    sign matrix or its :class:`PackedSigns` (same result, much faster).
    """
    idx = list(idx)
    if signs is None:
        raise ValueError("the any_conflict measure needs the sign matrix, got signs=None")
    if len(idx) < 2:
        return 0.0
    if isinstance(signs, PackedSigns):
        if signs.p == 0:
            raise ValueError("cannot compute any_conflict of sign vectors with no parameters (P = 0)")
        return signs.any_conflict_count(idx) / signs.p
    if signs.shape[1] == 0:
        raise ValueError("cannot compute any_conflict of sign vectors with no parameters (P = 0)")
    sub = signs[idx]
    conflict = (sub > 0).any(dim=0) & (sub < 0).any(dim=0)
    return int(conflict.sum()) / signs.shape[1]


FSD_MEASURES: dict[str, Callable[[Tensor, Tensor | PackedSigns | None, Sequence[int]], float]] = {
    "mean_pairwise": mean_pairwise_fsd,
    "any_conflict": any_conflict_fraction,
}


def rank_by_mean_fsd(row_means: Mapping[str, float], names: Sequence[str], *, largest: bool = False) -> list[str]:
    """Returns ``names`` in Greedy Adapter Mixing's order (Alg. 1): smallest mean FSD to the
    other adapters first (``largest=True``: the mirror, largest first); ties by name."""
    return sorted(names, key=lambda d: (-row_means[d] if largest else row_means[d], d))


def greedy_members(row_means: Mapping[str, float], target: str, size: int, *, largest: bool = False) -> tuple[str, ...]:
    """Greedy Adapter Mixing (Alg. 1) for ``target``: it plus the ``size - 1`` other adapters
    with the smallest mean FSD (``largest=True``: the mirror, the largest); ties by name.

    Returns:
        The sorted member names.
    """
    if target not in row_means:
        raise ValueError(f"unknown target {target!r}; the FSD matrix holds {sorted(row_means)}")
    if not 1 <= size <= len(row_means):
        raise ValueError(f"size must be in [1, {len(row_means)}], got {size}")
    others = rank_by_mean_fsd(row_means, [d for d in row_means if d != target], largest=largest)
    return tuple(sorted([target, *others[:size - 1]]))


class SignIndex:
    """Sign vectors and the FSD matrix of a set of adapters, built once in the driver."""

    def __init__(self, *, names: Sequence[str], signs: Tensor | PackedSigns, matrix: Tensor) -> None:
        if signs.shape[0] != len(names) or tuple(matrix.shape) != (len(names), len(names)):
            raise ValueError(f"{len(names)} names need signs with {len(names)} rows and a "
                             f"{len(names)}x{len(names)} matrix, got signs {tuple(signs.shape)} "
                             f"and matrix {tuple(matrix.shape)}")
        self.names: tuple[str, ...] = tuple(names)
        # What the pre-filter reads; an int8 matrix is packed and not kept.
        self.packed = signs if isinstance(signs, PackedSigns) else PackedSigns(signs)
        self.matrix = matrix
        self._position = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_weights(cls, weights_by_name: AdapterWeights) -> SignIndex:
        """Builds the index from adapter weights by domain name (kept in sorted order).

        Each adapter is read once and packed to bits at once (:func:`pack_adapters`), so
        ``weights_by_name`` may also be an iterable of ``(name, weights)`` pairs that loads
        one adapter at a time; the FSD matrix is counted on the bits.

        Raises:
            ValueError: if the adapters' parameter names or shapes differ.
        """
        names, packed = pack_adapters(weights_by_name)
        return cls(names=names, signs=packed, matrix=fsd_matrix(packed))

    @property
    def signs(self) -> Tensor:
        """The int8 [N, P] sign matrix, unpacked from the bits (for inspection, not hot paths)."""
        import numpy as np
        import torch

        pos = np.unpackbits(self.packed.pos.view(np.uint8), axis=1, count=self.packed.p).astype(np.int8)
        neg = np.unpackbits(self.packed.neg.view(np.uint8), axis=1, count=self.packed.p).astype(np.int8)
        return torch.from_numpy(pos - neg)

    def nbytes(self) -> int:
        """Memory the index holds: packed signs and the FSD matrix."""
        return self.packed.nbytes + self.matrix.numel() * self.matrix.element_size()

    def _indices(self, members: Sequence[str]) -> list[int]:
        for name in members:
            if name not in self._position:
                raise ValueError(f"unknown adapter {name!r}; the index holds {list(self.names)}")
        return [self._position[name] for name in members]

    def subset_fsd(self, members: Sequence[str], measure: str = "mean_pairwise") -> float:
        """Returns the FSD of a subset of adapters under one of :data:`FSD_MEASURES`."""
        if measure not in FSD_MEASURES:
            raise ValueError(f"unknown FSD measure {measure!r}; the measures are {sorted(FSD_MEASURES)}")
        return FSD_MEASURES[measure](self.matrix, self.packed, self._indices(members))

    def row_means(self) -> dict[str, float]:
        """Returns each adapter's mean FSD to the other adapters (Alg. 1); 0.0 for a lone adapter."""
        n = len(self.names)
        if n < 2:
            return {name: 0.0 for name in self.names}
        sums = self.matrix.sum(dim=1) / (n - 1)
        return {name: float(sums[i]) for i, name in enumerate(self.names)}
