"""Fraction of sign difference (FSD) between adapters (Nguyen & Le, ACL 2024, Alg. 3).

The FSD of two adapters is the number of positions where ``θ_A ⊙ θ_B`` is negative,
divided by the number of adapter parameters; zeros never count as a conflict. Signs are
compared, never products, so tiny half-precision weights cannot underflow to zero.
Every function here takes tensors (or dicts of tensors) and returns numbers or tensors.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from spaces.signbits import PackedSigns, check_same_shapes, pack_adapters, parameter_shapes

if TYPE_CHECKING:
    from torch import Tensor

    AdapterWeights = Mapping[str, Mapping[str, Tensor]] | Iterable[tuple[str, Mapping[str, Tensor]]]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")

# Columns of the [N, P] sign matrix turned into float indicators at once in fsd_matrix:
# at most 2**24 values per indicator (64 MiB in float32), and never more than 2**24
# columns so that float32 sums of 0/1 products stay exact integers.
_CHUNK_VALUES = 2**24


def layer_of(param_name: str) -> str:
    """Returns the transformer layer a parameter belongs to, e.g. ``"layer.3"``, or ``"other"``.

    ``"bert.encoder.layer.3.output.adapters.x.adapter_down.0.weight"`` -> ``"layer.3"``;
    ``layers.N``, ``h.N``, ``block.N`` and ``blocks.N`` are recognised the same way.
    """
    match = _LAYER_RE.search(param_name)
    return f"layer.{int(match.group(1))}" if match else "other"


def _check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], a_name: str = "a",
                       b_name: str = "b") -> None:
    check_same_shapes(parameter_shapes(a), parameter_shapes(b), a_name, b_name)


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
