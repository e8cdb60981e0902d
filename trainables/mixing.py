"""Mixing and magnitude pruning of adapters (Nguyen & Le, ACL 2024, Eq. 1 and Alg. 2).

Dicts of tensors in, new dicts of tensors out; inputs are never modified in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import torch
from torch import Tensor

from spaces.errors import SpecError
from spaces.fsd import layer_of

if TYPE_CHECKING:
    from spaces.spec import MixtureSpec

PruneScope = Literal["adapter", "layer"]


def _check_members(members: Sequence[Mapping[str, Tensor]]) -> None:
    if len(members) == 0:
        raise ValueError("cannot average an empty list of adapters")
    keys = set(members[0])
    for i, member in enumerate(members[1:], start=1):
        if set(member) != keys:
            first = min(keys ^ set(member))
            raise ValueError(f"member {i} has different parameters from member 0: "
                             f"{first!r} is only in one of them")
        for key in sorted(keys):
            if tuple(member[key].shape) != tuple(members[0][key].shape):
                raise ValueError(f"parameter {key!r} has shape {tuple(member[key].shape)} in member {i} "
                                 f"but {tuple(members[0][key].shape)} in member 0")


def average_weights(members: Sequence[Mapping[str, Tensor]],
                    weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Returns the (weighted) average of adapters, parameter by parameter.

    Args:
        members: adapters with identical parameter names and shapes.
        weights: one non-negative weight per member, normalised to sum to 1;
            uniform (the paper's Eq. 1) when omitted.

    Returns:
        A new dict with each parameter in the first member's dtype and device.
    """
    _check_members(members)
    if weights is None:
        weights = [1.0] * len(members)
    weights = [float(w) for w in weights]
    if len(weights) != len(members):
        raise ValueError(f"got {len(weights)} weights for {len(members)} members")
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    coefficients = [w / total for w in weights]

    out: dict[str, Tensor] = {}
    for key, reference in members[0].items():
        if not reference.is_floating_point():
            raise ValueError(f"parameter {key!r} has non-float dtype {reference.dtype}; only float "
                             "tensors can be averaged")
        # Accumulate in at least float32 so that half-precision adapters do not lose mass.
        acc_dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
        acc = torch.zeros(reference.shape, dtype=acc_dtype, device=reference.device)
        for c, member in zip(coefficients, members):
            acc += c * member[key].detach().to(device=reference.device, dtype=acc_dtype)
        out[key] = acc.to(reference.dtype)
    return out


def _prune_group(weights: Mapping[str, Tensor], keys: Sequence[str], ratio: float,
                 out: dict[str, Tensor]) -> None:
    """Zeroes the ``round(ratio * n)`` smallest |w| among ``keys`` (ties: earlier position first)."""
    flat = [weights[k].detach().flatten() for k in keys]
    n = sum(t.numel() for t in flat)
    count = round(ratio * n)
    if count == 0:
        for key in keys:
            out[key] = weights[key].detach().clone()
        return
    magnitudes = torch.cat([t.abs().to(torch.float64).cpu() for t in flat])
    order = torch.sort(magnitudes, stable=True).indices
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[:count]] = False
    start = 0
    for key, t in zip(keys, flat):
        mask = keep[start:start + t.numel()].to(t.device)
        out[key] = torch.where(mask, t, torch.zeros_like(t)).reshape(weights[key].shape)
        start += t.numel()


def prune_by_magnitude(weights: Mapping[str, Tensor], ratio: float,
                       scope: PruneScope = "adapter") -> dict[str, Tensor]:
    """Returns a copy of an adapter with the ``round(ratio * n)`` smallest-|w| entries set to zero.

    Args:
        weights: an adapter's parameters by name.
        ratio: the fraction of entries to zero, in [0, 1).
        scope: ``"adapter"`` ranks all parameters together (n = adapter size);
            ``"layer"`` ranks each :func:`spaces.fsd.layer_of` group on its own
            (n = that layer's size). Ties are broken by position: among equal |w|, the
            entry earlier in sorted-key, row-major order is zeroed first.

    Returns:
        A new dict with the same keys, shapes and dtypes.
    """
    if isinstance(ratio, bool) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if scope not in ("adapter", "layer"):
        raise ValueError(f"scope must be one of ['adapter', 'layer'], got {scope!r}")
    ratio = float(ratio)
    keys = sorted(weights)
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(layer_of(key) if scope == "layer" else "adapter", []).append(key)
    out: dict[str, Tensor] = {}
    for group_keys in groups.values():
        _prune_group(weights, group_keys, ratio, out)
    return {key: out[key] for key in weights}


def sparsity(weights: Mapping[str, Tensor]) -> float:
    """Returns the fraction of entries that are exactly zero."""
    n = sum(t.numel() for t in weights.values())
    if n == 0:
        raise ValueError("cannot compute the sparsity of an adapter with no parameters")
    return sum(int((t == 0).sum()) for t in weights.values()) / n


def build_mixture(member_weights: Mapping[str, Mapping[str, Tensor]],
                  spec: MixtureSpec) -> dict[str, Tensor]:
    """Returns the mixed (and possibly pruned) adapter a :class:`MixtureSpec` describes.

    Args:
        member_weights: adapter parameters by domain name; may hold more than the members.
        spec: which members to average with which weights, and how to prune:
            with ``prune_method == "magnitude"`` and a positive ratio, each member is
            pruned before averaging (``prune_when == "members"``) or the average is
            pruned (``"mixture"``), with ``prune_scope``.

    Raises:
        SpecError: (a ValueError) naming a member that has no weights.
    """
    missing = [m for m in spec.members if m not in member_weights]
    if missing:
        raise SpecError(f"no adapter weights for mixture member(s) {missing}; "
                        f"available: {sorted(member_weights)}")
    prune = spec.prune_method == "magnitude" and spec.prune_ratio > 0
    members = [member_weights[m] for m in spec.members]
    if prune and spec.prune_when == "members":
        members = [prune_by_magnitude(m, spec.prune_ratio, spec.prune_scope) for m in members]
    mixture = average_weights(members, spec.weights)
    if prune and spec.prune_when == "mixture":
        mixture = prune_by_magnitude(mixture, spec.prune_ratio, spec.prune_scope)
    return mixture
