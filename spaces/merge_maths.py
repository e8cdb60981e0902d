"""The tensor maths of the merge operators, on one parameter's stacked member deltas.

Pure functions in the style of PEFT's ``utils/merge_utils.py``: tensors in, new tensors out,
nothing of models, Ray or MLflow. :mod:`spaces.operators` binds them to the operators'
names; :func:`trainables.merging.merge_adapters` applies them parameter by parameter.

Conventions, where PEFT 0.17 and mergekit 0.1.5 differ or leave a choice open:

- **TIES keeps** ``max(1, floor(density * n))`` entries of an ``n``-entry delta: PEFT's
  ``int(density * n)`` and mergekit's count wherever they keep something, but never the
  empty tensor PEFT returns (or mergekit refuses) when ``density * n < 1``: a small bias
  vector keeps its largest entry instead of vanishing from the merge.
- **Ties in |delta|** at the cut keep the entries that come first in row-major order
  (``torch.topk``'s choice among equal values is unspecified; this one is reproducible).
- **The TIES sign election** is the sign of the weighted sum, +1 on a tie (PEFT's
  ``calculate_majority_sign_mask`` with ``"total"``); the agreeing values are averaged by
  their weights (mergekit's ``normalize=True``).
- **DARE rescales** the kept entries by ``1 / (1 - drop_rate)``: the DARE paper's rule and
  PEFT's ``random_pruning(rescale=True)``, which keeps each delta's expectation. mergekit's
  option to rescale to the delta's L1 norm is not offered.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # torch is imported where it is used: the config reads this registry's names, not its maths
    from torch import Tensor


def kept_count(density: float, n: int) -> int:
    """Returns how many of ``n`` entries TIES keeps at ``density``: ``max(1, floor(density * n))``."""
    return min(n, max(1, int(density * n)))


def trim_by_magnitude(tensor: Tensor, density: float) -> Tensor:
    """Returns a copy of ``tensor`` keeping only its :func:`kept_count` largest |values|.

    Args:
        tensor: one member's delta for one parameter.
        density: the fraction of entries to keep, in (0, 1]; ties in |value| keep the entry
            that comes first in row-major order.

    Returns:
        A new tensor of the same shape and dtype, zero outside the kept entries.
    """
    return trim_rows(tensor.reshape(1, -1), density).reshape(tensor.shape)


def trim_rows(rows: Tensor, density: float) -> Tensor:
    """:func:`trim_by_magnitude` of each row of a ``[members, n]`` matrix, in one pass."""
    import torch

    keep = kept_count(density, rows.shape[1])
    if keep >= rows.shape[1]:
        return rows.clone()
    magnitude = rows.abs()
    # The keep-th largest |value| per row (topk's values are exact; only its order of ties is not),
    # then everything above it and, of the entries equal to it, the first ones up to `keep`.
    threshold = torch.topk(magnitude, keep, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    above = magnitude > threshold
    at = magnitude == threshold
    room = keep - above.sum(dim=1, keepdim=True)
    mask = above | (at & (at.cumsum(dim=1) <= room))
    return torch.where(mask, rows, torch.zeros_like(rows))


def dare_seed(seed: int, key: str, member_index: int) -> int:
    """Returns the 63-bit seed of DARE's drop mask for one member's parameter ``key``.

    A hash of ``(seed, key, member_index)`` only: the mask of a parameter does not depend on
    which other parameters were merged before it, nor on the process (Python's ``hash`` is
    salted per process; blake2b is not).
    """
    digest = hashlib.blake2b(f"{seed}\0{key}\0{member_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def drop_and_rescale(tensor: Tensor, drop_rate: float, seed: int) -> Tensor:
    """Returns ``tensor`` with each entry dropped with probability ``drop_rate``, the rest divided by 1 - drop_rate.

    The mask is ``torch.bernoulli`` of a float32 tensor full of ``1 - drop_rate``, drawn
    from a CPU generator seeded with ``seed``: the same draw as PEFT's ``random_pruning``
    after ``torch.manual_seed(seed)``, on any device.
    """
    import torch

    if drop_rate == 0.0:
        return tensor.clone()
    generator = torch.Generator().manual_seed(seed)
    keep = torch.bernoulli(torch.full(tensor.shape, 1.0 - drop_rate, dtype=torch.float32), generator=generator)
    return tensor * keep.to(device=tensor.device, dtype=tensor.dtype) / (1.0 - drop_rate)


def elect_and_merge(deltas: Tensor, weights: Tensor) -> Tensor:
    """Returns the TIES merge of stacked deltas: the weighted mean of the values that agree with the elected sign.

    Args:
        deltas: ``[members, *shape]``, already trimmed (TIES) or dropped (DARE-TIES).
        weights: ``[members]``, non-negative.

    Returns:
        ``[*shape]``: per position, the sign of the weighted sum is elected (+1 on a tie,
        as PEFT's ``calculate_majority_sign_mask``); the non-zero weighted values of that
        sign are summed and divided by their members' total weight; 0 where none agrees.
    """
    import torch

    w = weights.reshape(weights.shape + (1,) * (deltas.dim() - 1)).to(deltas.dtype)
    weighted = deltas * w
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agree = weighted * elected > 0  # non-zero and of the elected sign
    total = torch.where(agree, weighted, 0.0).sum(dim=0)
    mass = (w * agree).sum(dim=0)
    return torch.where(mass > 0, total / mass.clamp(min=torch.finfo(mass.dtype).tiny), 0.0)


# The operators: one parameter's stacked deltas [members, *shape] -> its merged delta [*shape].
# ``params`` holds the operator's parameters by their MixtureSpec names.


def task_arithmetic_delta(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    """The weighted mean of the deltas (Ilharco et al. 2023, weights normalised)."""
    import torch

    return torch.tensordot(weights.to(deltas.dtype), deltas, dims=1)


def ties_delta(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    """TIES (Yadav et al. 2023): trim each delta to its top ``density``, elect signs, disjoint mean."""
    trimmed = trim_rows(deltas.reshape(deltas.shape[0], -1), params["density"]).reshape(deltas.shape)
    return elect_and_merge(trimmed, weights)


def dropped(deltas: Tensor, key: str, params: Mapping) -> Tensor:
    """Each member's delta after DARE's drop and rescale, its mask a function of (merge_seed, key, member)."""
    import torch

    return torch.stack([drop_and_rescale(d, params["drop_rate"], dare_seed(params["merge_seed"], key, i))
                        for i, d in enumerate(deltas)])


def dare_linear_delta(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    """DARE (Yu et al. 2024): drop and rescale, then the weighted mean."""
    import torch

    return torch.tensordot(weights.to(deltas.dtype), dropped(deltas, key, params), dims=1)


def dare_ties_delta(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    """DARE's drop and rescale, then TIES' sign election and disjoint mean."""
    return elect_and_merge(dropped(deltas, key, params), weights)
