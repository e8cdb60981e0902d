"""Mixing and pruning of adapters (Nguyen & Le, ACL 2024, Eq. 1, Alg. 2 and Alg. 4).

Dicts of tensors in, new dicts of tensors out; inputs are never modified in place.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor

from spaces.errors import SpecError
from spaces.fsd import layer_of, per_layer_fsd
from spaces.spec import PRUNE_SCOPES, PruneScope
from trainables.merging import average_weights, check_same_parameters, merge_adapters

if TYPE_CHECKING:
    from spaces.spec import MixtureSpec


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
        ratio: the fraction of entries to zero, in [0, 1]; 1.0 zeroes everything.
        scope: ``"adapter"`` ranks all parameters together (n = adapter size);
            ``"layer"`` ranks each :func:`spaces.fsd.layer_of` group on its own
            (n = that layer's size). Ties are broken by position: among equal |w|, the
            entry earlier in sorted-key, row-major order is zeroed first.

    Returns:
        A new dict with the same keys, shapes and dtypes.
    """
    if isinstance(ratio, bool) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"scope must be one of {list(PRUNE_SCOPES)}, got {scope!r}")
    ratio = float(ratio)
    keys = sorted(weights)
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(layer_of(key) if scope == "layer" else "adapter", []).append(key)
    out: dict[str, Tensor] = {}
    for group_keys in groups.values():
        _prune_group(weights, group_keys, ratio, out)
    return {key: out[key] for key in weights}


def _layer_order(layer: str) -> tuple[float, str]:
    """Sorts ``layer.2`` before ``layer.10``, and ``other`` after every numbered layer."""
    index = layer.rsplit(".", 1)[-1]
    return (int(index) if layer.startswith("layer.") and index.isdigit() else math.inf, layer)


def conflict_layer_ranking(member_weights: Mapping[str, Mapping[str, Tensor]]) -> list[tuple[str, float]]:
    """Returns the layers sorted by sign conflict between the members, most conflicting first.

    A layer's conflict is the mean, over the unordered pairs of members, of their
    per-layer FSD (:func:`spaces.fsd.per_layer_fsd`); with one member every layer scores
    0.0. Layers are the :func:`spaces.fsd.layer_of` groups (``"other"`` included).

    Args:
        member_weights: adapters by domain name, with identical parameter names and shapes.

    Returns:
        ``(layer, mean pairwise per-layer FSD)`` pairs, by descending FSD; ties in layer
        order (``layer.2`` before ``layer.10``, ``other`` last).
    """
    names = sorted(member_weights)
    if not names:
        raise ValueError("cannot rank the layers of an empty set of adapters")
    members = [member_weights[n] for n in names]
    check_same_parameters(members)
    totals = {layer: 0.0 for layer in {layer_of(key) for key in members[0]}}
    pairs = list(itertools.combinations(members, 2))
    for a, b in pairs:
        for layer, fsd in per_layer_fsd(a, b).items():
            totals[layer] += fsd
    means = {layer: (total / len(pairs) if pairs else 0.0) for layer, total in totals.items()}
    ranked = sorted(means, key=lambda layer: (-means[layer], _layer_order(layer)))
    return [(layer, means[layer]) for layer in ranked]


def prune_conflict_layers(member_weights: Mapping[str, Mapping[str, Tensor]], sparsity: float,
                          m: int) -> dict[str, dict[str, Tensor]]:
    """Returns copies of the members with their m most sign-conflicting layers pruned (Alg. 4).

    The layers are chosen once for all members by :func:`conflict_layer_ranking`. In each
    chosen layer, every member loses its ``round(sparsity * n_layer)`` smallest-|w| entries
    (ties as in :func:`prune_by_magnitude` with ``scope="layer"``); the other layers are
    copied unchanged. Averaging the result is the caller's step.

    Args:
        member_weights: adapters by domain name, with identical parameter names and shapes.
        sparsity: the fraction of each chosen layer to zero, in [0, 1].
        m: how many layers to prune, at least 1; all layers when m exceeds their number.

    Returns:
        A new dict by domain name of new dicts with the same keys, shapes and dtypes.
    """
    if isinstance(sparsity, bool) or not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an integer >= 1, got {m!r}")
    chosen = {layer for layer, _ in conflict_layer_ranking(member_weights)[:m]}
    out: dict[str, dict[str, Tensor]] = {}
    for name, weights in member_weights.items():
        pruned: dict[str, Tensor] = {}
        groups: dict[str, list[str]] = {}
        for key in sorted(weights):
            groups.setdefault(layer_of(key), []).append(key)
        for layer, keys in groups.items():
            _prune_group(weights, keys, float(sparsity) if layer in chosen else 0.0, pruned)
        out[name] = {key: pruned[key] for key in weights}
    return out


def sparsity(weights: Mapping[str, Tensor]) -> float:
    """Returns the fraction of entries that are exactly zero."""
    n = sum(t.numel() for t in weights.values())
    if n == 0:
        raise ValueError("cannot compute the sparsity of an adapter with no parameters")
    return sum(int((t == 0).sum()) for t in weights.values()) / n


def build_mixture(member_weights: Mapping[str, Mapping[str, Tensor]],
                  spec: MixtureSpec, init: Mapping[str, Tensor] | None = None, *, lora=None) -> dict[str, Tensor]:
    """Returns the mixed (and possibly pruned) adapter a :class:`MixtureSpec` describes.

    Args:
        member_weights: adapter parameters by domain name; may hold more than the members.
        spec: which members to average with which weights, and how to prune:
            with ``prune_method == "magnitude"`` and a positive ratio, each member is
            pruned before averaging (``prune_when == "members"``) or the average is
            pruned (``"mixture"``), with ``prune_scope``. With ``"conflict_layers"``
            the members' ``spec.prune_layers`` most conflicting layers are pruned before
            averaging (:func:`prune_conflict_layers`); ``prune_when`` plays no part.
            The (pruned) members are merged with ``spec.merge_method`` and its parameters
            (:func:`trainables.merging.merge_adapters`; ``average`` is the paper's Eq. 1).
        init: the adapters' shared initialisation, needed by every operator but ``average``.
        lora: a :class:`trainables.lora_mixture.LoraSlot`: LoRA members are merged on ΔW and
            factorised back into the slot (``search.lora_merge: delta_svd``); pruning acts on
            the factors, before (members) or after (mixture) the merge.

    Raises:
        SpecError: (a ValueError) naming a member that has no weights, or an operator that
            needs ``init`` without it.
    """
    missing = [m for m in spec.members if m not in member_weights]
    if missing:
        raise SpecError(f"no adapter weights for mixture member(s) {missing}; "
                        f"available: {sorted(member_weights)}")
    prune = spec.prune_method == "magnitude" and spec.prune_ratio > 0
    if spec.prune_method == "conflict_layers" and spec.prune_ratio > 0:
        pruned = prune_conflict_layers({m: member_weights[m] for m in spec.members},
                                       spec.prune_ratio, spec.prune_layers)
        return _merge([pruned[m] for m in spec.members], spec, init, lora)
    members = [member_weights[m] for m in spec.members]
    if prune and spec.prune_when == "members":
        members = [prune_by_magnitude(m, spec.prune_ratio, spec.prune_scope) for m in members]
    mixture = _merge(members, spec, init, lora)
    if prune and spec.prune_when == "mixture":
        mixture = prune_by_magnitude(mixture, spec.prune_ratio, spec.prune_scope)
    return mixture


def _merge(members: Sequence[Mapping[str, Tensor]], spec: MixtureSpec,
           init: Mapping[str, Tensor] | None, lora=None) -> dict[str, Tensor]:
    """The members merged with the spec's operator (its weights and parameters)."""
    if lora is not None:
        return lora.merge(members, spec)
    if spec.merge_method == "average":
        return average_weights(members, spec.weights)
    given = {k: v for k, v in spec.merge_parameters.items() if v is not None}
    return merge_adapters(members, method=spec.merge_method, weights=spec.weights, init=init, **given)
