"""Sign vectors as bits: one bit-row of "> 0" and one of "< 0" per adapter.

What the FSD matrix and the pre-filter's subset measures (:mod:`spaces.fsd`) count on when
there are many adapters: four times smaller than int8 signs, and a subset's conflicts are
a few bitwise ORs, one AND and a popcount. Adapters are packed one at a time
(:func:`pack_adapters`), so a store of hundreds needs one adapter's weights in memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    AdapterWeights = Mapping[str, Mapping[str, Tensor]] | Iterable[tuple[str, Mapping[str, Tensor]]]

# uint64 words of every bit-row that PackedSigns.conflict_counts ANDs at once: 32 KiB a
# row, so a block of all rows stays in the cache while each row is compared to the others.
_CHUNK_WORDS = 4096


def parameter_shapes(weights: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Each parameter's shape, by name."""
    return {key: tuple(value.shape) for key, value in weights.items()}


def check_same_shapes(a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]], a_name: str,
                       b_name: str) -> None:
    """Raises ValueError naming the first parameter whose name or shape differs between two adapters."""
    keys_a, keys_b = set(a), set(b)
    if keys_a != keys_b:
        first = min(keys_a ^ keys_b)
        where = a_name if first in keys_a else b_name
        raise ValueError(f"adapters {a_name!r} and {b_name!r} have different parameters: "
                         f"{first!r} is only in {where!r}")
    for key in sorted(keys_a):
        if a[key] != b[key]:
            raise ValueError(f"parameter {key!r} has shape {a[key]} in {a_name!r} but {b[key]} in {b_name!r}")


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
            first, shapes = name, parameter_shapes(adapter)
            packer = SignPacker(shapes)
        else:
            check_same_shapes(shapes, parameter_shapes(adapter), first, name)
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
