"""Merging adapters with an operator of :mod:`spaces.operators`: average, task arithmetic, TIES, DARE.

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

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from spaces.errors import SpecError
from spaces.operators import MERGE_OPERATORS, operator_parameters


def check_same_parameters(members: Sequence[Mapping[str, Tensor]]) -> None:
    """Raises ValueError unless the adapters have the same parameter names and shapes (and there is one)."""
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
    check_same_parameters(members)
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
                   lam: float | None = None, merge_seed: int | None = None) -> dict[str, Tensor]:
    """Returns the adapter that merging ``members`` with ``method`` gives.

    Args:
        members: adapters with identical parameter names and shapes (read-only tensors are
            fine: nothing is written into them).
        method: one of :data:`spaces.operators.MERGE_OPERATORS`.
        weights: one weight >= 0 per member, normalised to sum to 1; uniform when omitted.
        init: the members' shared initialisation (same names and shapes); required by every
            method but ``average``, which must not get it.
        density: ``ties`` only (required): the fraction of each delta kept, in (0, 1].
        drop_rate: ``dare_linear``/``dare_ties`` only (required): in [0, 1).
        lam: scale of the merged delta, > 0; default 1.0; not for ``average``.
        merge_seed: DARE only, default 0: the drop mask of member i's parameter ``key`` is a
            function of ``(merge_seed, key, i)`` alone (:func:`spaces.merge_maths.dare_seed`).

    Returns:
        A new dict, keys in the first member's order, each tensor in the first member's dtype
        and device; computed in float32 (float64 for float64 members).

    Raises:
        SpecError: (a ValueError) an unknown method, a parameter out of range or not taken by
            the method, a missing or mismatched ``init``, bad weights.
        ValueError: members with different parameter names or shapes.
    """
    if method not in MERGE_OPERATORS:
        raise SpecError(f"merge method must be one of {list(MERGE_OPERATORS)}, got {method!r}")
    operator = MERGE_OPERATORS[method]
    given = {"density": density, "drop_rate": drop_rate, "lam": lam, "merge_seed": merge_seed}
    for name, value in given.items():
        if value is not None and name not in operator.parameters:
            raise SpecError(f"{name}={value!r} does not apply to merge method {method!r}; "
                            f"it takes {list(operator.parameters) or 'no parameters'}")
    params = operator_parameters(method, given)
    check_same_parameters(members)
    coefficients = _normalised(weights, len(members))
    if operator.merge_delta is None:
        if init is not None:
            raise SpecError("merge method 'average' does not use init; pass init=None")
        return average_weights(members, coefficients)
    if init is None:
        raise SpecError(f"merge method {method!r} merges deltas from the adapters' shared initialisation: "
                        "pass init (trainables.initialisation.initial_adapter_weights), or use 'average'")
    _check_init(init, members[0])
    scale = float(params.get("lam", 1.0))

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
        out[key] = (base + scale * operator.merge_delta(deltas, w, key, params)).to(reference.dtype)
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
