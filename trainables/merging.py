"""Merge operators on adapters: average, task arithmetic, TIES and DARE.

Pure tensor maths in the style of PEFT's ``utils/merge_utils.py``: dicts of tensors in, a new
dict of tensors out, nothing of models, Ray or MLflow. Every operator but ``average`` acts on
*deltas* ``theta_i - init`` from the members' shared initialisation (the training seed makes
it the same for every adapter of a store; :mod:`trainables.initialisation` rebuilds it) and
returns ``init + lam * merged_delta``.

Weights are relative for every operator: they are normalised to sum to 1, so that
``uniform`` means the same for any number of members and ``lam`` alone sets the scale.
Hence ``task_arithmetic`` with uniform weights and ``lam=1`` is exactly the ``average``, and
``lam=k`` is the task-vector *sum* of Ilharco et al. (PEFT's ``task_arithmetic`` with
weights 1). TIES and DARE-TIES take the *weighted* mean of the values that agree with the
elected sign (mergekit's ``normalize=True``), and elect that sign on the weighted deltas:
a member with weight 0 has no influence at all. With equal weights both equal PEFT's
``ties``/``dare_ties`` with weights 1; with unequal ones PEFT elects on unweighted deltas and
divides the weighted sum by the count of agreeing members, which is not a mean.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from spaces.errors import SpecError
from spaces.operators import MERGE_OPERATORS
from trainables.mixing import _check_members, average_weights

MergeMethodName = Literal["average", "task_arithmetic", "ties", "dare_linear", "dare_ties"]


# Building blocks on one parameter: the members' deltas stacked on dim 0 -------------------


def trim_by_magnitude(tensor: Tensor, density: float) -> Tensor:
    """Returns a copy of ``tensor`` keeping only its ``round(density * numel)`` largest |values|.

    Args:
        tensor: one member's delta for one parameter.
        density: the fraction of entries to keep, in (0, 1]; ties in |value| keep the entry
            that comes first in row-major order.

    Returns:
        A new tensor of the same shape and dtype, zero outside the kept entries.
    """
    return _trim_rows(tensor.reshape(1, -1), density).reshape(tensor.shape)


def _trim_rows(rows: Tensor, density: float) -> Tensor:
    """:func:`trim_by_magnitude` of each row of a ``[members, n]`` matrix, in one pass."""
    keep = round(density * rows.shape[1])
    if keep >= rows.shape[1]:
        return rows.clone()
    if keep == 0:
        return torch.zeros_like(rows)
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
    w = weights.reshape(weights.shape + (1,) * (deltas.dim() - 1)).to(deltas.dtype)
    weighted = deltas * w
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agree = weighted * elected > 0  # non-zero and of the elected sign
    total = torch.where(agree, weighted, 0.0).sum(dim=0)
    mass = (w * agree).sum(dim=0)
    return torch.where(mass > 0, total / mass.clamp(min=torch.finfo(mass.dtype).tiny), 0.0)


# The operators: one parameter's stacked deltas -> its merged delta ------------------------


def _task_arithmetic(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    return torch.tensordot(weights.to(deltas.dtype), deltas, dims=1)


def _ties(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    trimmed = _trim_rows(deltas.reshape(deltas.shape[0], -1), params["density"]).reshape(deltas.shape)
    return elect_and_merge(trimmed, weights)


def _dropped(deltas: Tensor, key: str, params: Mapping) -> Tensor:
    return torch.stack([drop_and_rescale(d, params["drop_rate"], dare_seed(params["seed"], key, i))
                        for i, d in enumerate(deltas)])


def _dare_linear(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    return torch.tensordot(weights.to(deltas.dtype), _dropped(deltas, key, params), dims=1)


def _dare_ties(deltas: Tensor, weights: Tensor, key: str, params: Mapping) -> Tensor:
    return elect_and_merge(_dropped(deltas, key, params), weights)


@dataclass(frozen=True)
class MergeMethod:
    """A merge operator: its name, whether it needs the shared initialisation, its parameters."""

    name: str
    needs_init: bool
    parameters: tuple[str, ...]  # of "density", "drop_rate", "lam", "seed"; all required but lam and seed
    merge_delta: Callable[[Tensor, Tensor, str, Mapping], Tensor] | None  # None: average the weights
    description: str


_MERGE_DELTAS = {"average": None, "task_arithmetic": _task_arithmetic, "ties": _ties,
                 "dare_linear": _dare_linear, "dare_ties": _dare_ties}
# Names, parameters and needs_init come from the one registry of operators (spaces.operators).
MERGE_METHODS: dict[str, MergeMethod] = {
    name: MergeMethod(name, op.needs_init, op.parameters, _MERGE_DELTAS[name], op.description)
    for name, op in MERGE_OPERATORS.items()}


def _check_parameters(method: MergeMethod, density, drop_rate, lam, seed) -> None:
    given = {"density": density, "drop_rate": drop_rate, "lam": lam, "seed": seed}
    for name, value in given.items():
        if value is not None and name not in method.parameters:
            raise SpecError(f"{name}={value!r} does not apply to merge method {method.name!r}; "
                            f"it takes {list(method.parameters) or 'no parameters'}")
    if "density" in method.parameters:
        if density is None:
            raise SpecError(f"merge method {method.name!r} needs density, the fraction of each delta "
                            "to keep, in (0, 1]")
        if isinstance(density, bool) or not 0.0 < float(density) <= 1.0:
            raise SpecError(f"density must be in (0, 1], got {density!r}")
    if "drop_rate" in method.parameters:
        if drop_rate is None:
            raise SpecError(f"merge method {method.name!r} needs drop_rate, the probability of dropping "
                            "a delta entry, in [0, 1)")
        if isinstance(drop_rate, bool) or not 0.0 <= float(drop_rate) < 1.0:
            raise SpecError(f"drop_rate must be in [0, 1) (1 would drop everything and rescale by "
                            f"1/0), got {drop_rate!r}")
    if lam is not None and (isinstance(lam, bool) or not (float(lam) > 0 and math.isfinite(float(lam)))):
        raise SpecError(f"lam must be a finite number > 0, got {lam!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed must be an integer, got {seed!r}")


def _normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise SpecError(f"weights has {len(values)} entries for {count} members; give one weight per member")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise SpecError(f"weights must be finite and >= 0 with a positive sum, got {list(weights)}")
    total = sum(values)
    return [w / total for w in values]


def merge_adapters(members: Sequence[Mapping[str, Tensor]], *, method: str,
                   weights: Sequence[float] | None = None, init: Mapping[str, Tensor] | None = None,
                   density: float | None = None, drop_rate: float | None = None,
                   lam: float | None = None, seed: int | None = None) -> dict[str, Tensor]:
    """Returns the adapter that merging ``members`` with ``method`` gives.

    Args:
        members: adapters with identical parameter names and shapes (read-only tensors are
            fine: nothing is written into them).
        method: one of :data:`MERGE_METHODS`.
        weights: one weight >= 0 per member, normalised to sum to 1; uniform when omitted.
        init: the members' shared initialisation (same names and shapes); required by every
            method but ``average``, which must not get it.
        density: ``ties`` only (required): the fraction of each delta kept, in (0, 1].
        drop_rate: ``dare_linear``/``dare_ties`` only (required): in [0, 1).
        lam: scale of the merged delta, > 0; default 1.0; not for ``average``.
        seed: DARE only, default 0: the drop mask of member i's parameter ``key`` is a function
            of ``(seed, key, i)`` alone (:func:`dare_seed`).

    Returns:
        A new dict, keys in the first member's order, each tensor in the first member's dtype
        and device; computed in float32 (float64 for float64 members).

    Raises:
        SpecError: (a ValueError) an unknown method, a parameter out of range or not taken by
            the method, a missing or mismatched ``init``, bad weights.
        ValueError: members with different parameter names or shapes.
    """
    if method not in MERGE_METHODS:
        raise SpecError(f"merge method must be one of {list(MERGE_METHODS)}, got {method!r}")
    spec = MERGE_METHODS[method]
    _check_parameters(spec, density, drop_rate, lam, seed)
    _check_members(members)
    coefficients = _normalised(weights, len(members))
    if spec.merge_delta is None:
        if init is not None:
            raise SpecError("merge method 'average' does not use init; pass init=None")
        return average_weights(members, coefficients)
    if init is None:
        raise SpecError(f"merge method {method!r} merges deltas from the adapters' shared initialisation: "
                        "pass init (trainables.initialisation.initial_adapter_weights), or use 'average'")
    _check_init(init, members[0])
    params = {"density": None if density is None else float(density),
              "drop_rate": None if drop_rate is None else float(drop_rate),
              "seed": 0 if seed is None else seed}
    scale = 1.0 if lam is None else float(lam)

    out: dict[str, Tensor] = {}
    for key, reference in members[0].items():
        if not reference.is_floating_point():
            raise ValueError(f"parameter {key!r} has non-float dtype {reference.dtype}; "
                             "only float tensors can be merged")
        acc = torch.float64 if reference.dtype == torch.float64 else torch.float32
        base = init[key].detach().to(device=reference.device, dtype=acc)
        # Subtraction makes new tensors: the members (maybe read-only shared memory) are never written.
        deltas = torch.stack([m[key].detach().to(device=reference.device, dtype=acc) - base for m in members])
        w = torch.tensor(coefficients, dtype=acc, device=reference.device)
        out[key] = (base + scale * spec.merge_delta(deltas, w, key, params)).to(reference.dtype)
    return out


def _check_init(init: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> None:
    if set(init) != set(reference):
        odd = sorted(set(init) ^ set(reference))
        raise SpecError(f"init does not match the members: parameter {odd[0]!r} is only in one of them "
                        f"({len(odd)} such); the initialisation must be rebuilt for this adapter architecture")
    for key, t in reference.items():
        if tuple(init[key].shape) != tuple(t.shape):
            raise SpecError(f"init has shape {tuple(init[key].shape)} for parameter {key!r} but the members "
                            f"have {tuple(t.shape)}")
