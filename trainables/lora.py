"""LoRA as the update it adds, ΔW = B·A·scaling: FSD, merging and refactorisation on ΔW.

A LoRA adapter's factors are not determined by what it does: B·A = (-B)·(-A), and
averaging factors adds cross terms (mean(B)·mean(A) is not mean(B·A)). The invariant is
the update ΔW of each adapted module, so signmix compares and merges LoRA adapters there
and factorises the result back into A and B afterwards.

Conventions (the same in ``adapters`` and PEFT): ``lora_A`` is ``[r, in_features]``,
``lora_B`` is ``[out_features, r]``, and the module's output gains ``x @ A.T @ B.T * scaling``,
so ``ΔW = B @ A * scaling`` has the shape of the module's weight ``[out, in]``. ``adapters``
scales by ``alpha / r``; PEFT by ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with
``use_rslora``, with ``r`` and ``alpha`` per module under ``rank_pattern``/``alpha_pattern``.

Pure tensor maths: dicts of tensors in, new dicts out; no models, files, Ray or MLflow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from spaces.operators import MERGE_OPERATORS
from trainables.merging import average_weights, merge_adapters

# adapters: "<module>.loras.<name>.lora_A"; PEFT: "<module>.lora_A.weight" or "<module>.lora_A.<name>.weight"
_ADAPTERS_KEY = re.compile(r"^(?P<module>.+)\.loras\.[^.]+\.lora_(?P<factor>[AB])$")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


def lora_factors(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Returns ``{module: (A, B)}`` for an ``adapters`` or PEFT LoRA state dict.

    Raises:
        ValueError: a key that is not a LoRA factor, a module with only one factor, or
            factors whose ranks disagree (``A`` is ``[r, in]``, ``B`` is ``[out, r]``).
    """
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _ADAPTERS_KEY.match(key) or _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"{key!r} is not a LoRA factor (expected '<module>.loras.<name>.lora_A|B' "
                             "or '<module>.lora_A|B.weight')")
        parts.setdefault(match["module"], {})[match["factor"]] = tensor
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for module, factors in sorted(parts.items()):
        if set(factors) != {"A", "B"}:
            raise ValueError(f"module {module!r} has lora_{''.join(factors)} but not both lora_A and lora_B")
        a, b = factors["A"], factors["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"module {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not "
                             "[r, in] and [out, r] with one r")
        out[module] = (a, b)
    return out


def _scaling_of(scaling: float | Mapping[str, float], module: str) -> float:
    if isinstance(scaling, Mapping):
        if module not in scaling:
            raise ValueError(f"no scaling for LoRA module {module!r}; scaling has {sorted(scaling)[:3]}...")
        return float(scaling[module])
    return float(scaling)


def lora_delta_weights(state_dict: Mapping[str, Tensor], *,
                       scaling: float | Mapping[str, float]) -> dict[str, Tensor]:
    """Returns ``{module: ΔW}`` with ``ΔW = B @ A * scaling`` for every adapted module.

    Args:
        state_dict: LoRA factors, ``adapters`` or PEFT keys; ranks may differ per module
            (PEFT's ``rank_pattern``): each module's rank is read from its factors' shapes.
        scaling: ``alpha / r`` for all modules (``adapters``), or a mapping module -> scaling
            (PEFT with ``rank_pattern``/``alpha_pattern``/``use_rslora``).

    Returns:
        float32 (float64 for float64 factors) ``[out, in]`` tensors, keyed by module path.
    """
    out: dict[str, Tensor] = {}
    for module, (a, b) in lora_factors(state_dict).items():
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        out[module] = (b.detach().to(dtype) @ a.detach().to(dtype)) * _scaling_of(scaling, module)
    return out


def merge_lora_deltas(deltas: Sequence[Mapping[str, Tensor]], *, method: str = "average",
                      weights: Sequence[float] | None = None, **params) -> dict[str, Tensor]:
    """Returns the merged update ``{module: ΔW}`` of LoRA members, merged on ΔW.

    ``average`` is :func:`trainables.merging.average_weights`; the operators that merge
    deltas from a shared initialisation (``task_arithmetic``, ``ties``, ``dare_*`` of
    :mod:`trainables.merging`) get ``init = 0``: a LoRA starts with ``B = 0``, so every
    member's ΔW starts at zero whatever its ``A`` was (the zero-delta convention).
    ``params`` are passed on (``density``, ``drop_rate``, ``lam``, ``merge_seed``).
    """
    if method == "average" and not params:
        return average_weights(list(deltas), weights)
    init = None
    if method in MERGE_OPERATORS and MERGE_OPERATORS[method].needs_init:
        init = {k: torch.zeros_like(t) for k, t in deltas[0].items()}
    return merge_adapters(list(deltas), method=method, weights=weights, init=init, **params)


@dataclass(frozen=True)
class LoraFactorisation:
    """LoRA factors of a merged update, and how well they reproduce it.

    ``state_dict`` holds ``<module>.loras.<name>.lora_A|B`` (``adapters`` keys) for an
    adapter with rank ``rank`` and ``alpha = scaling * rank``. ``relative_error`` is
    ``||ΔW - B·A·scaling||_F / ||ΔW||_F`` over all modules together; ``module_errors`` is the
    same ratio per module (0.0 for a module whose ΔW is zero and is reproduced).
    """

    state_dict: dict[str, Tensor]
    rank: int
    scaling: float
    relative_error: float
    module_errors: dict[str, float]

    @property
    def alpha(self) -> float:
        return self.scaling * self.rank


def _keys(module: str, name: str) -> tuple[str, str]:
    return f"{module}.loras.{name}.lora_A", f"{module}.loras.{name}.lora_B"


def factorise_svd(deltas: Mapping[str, Tensor], *, rank: int, scaling: float,
                  name: str = "signmix") -> LoraFactorisation:
    """Returns rank-``rank`` LoRA factors of each ``ΔW`` by truncated SVD (the best rank-r fit in Frobenius norm).

    ``ΔW / scaling = U S Vᵀ``; ``B = U_r sqrt(S_r)`` and ``A = sqrt(S_r) V_rᵀ`` split the
    singular values evenly between the factors. A module with fewer than ``rank`` singular
    values gets zero rows/columns, so every module has the same rank (``adapters`` has one r).
    The error of a module is ``sqrt(Σ dropped S²) / ||ΔW||``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if not (scaling > 0 and math.isfinite(scaling)):
        raise ValueError(f"scaling must be a finite number > 0, got {scaling!r}")
    out: dict[str, Tensor] = {}
    errors: dict[str, float] = {}
    dropped_total, norm_total = 0.0, 0.0
    for module, delta in sorted(deltas.items()):
        work = delta.detach().to(torch.float64) / scaling
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        keep = min(rank, s.numel())
        root = s[:keep].sqrt()
        b = torch.zeros(work.shape[0], rank, dtype=torch.float64)
        a = torch.zeros(rank, work.shape[1], dtype=torch.float64)
        b[:, :keep] = u[:, :keep] * root
        a[:keep] = root[:, None] * vh[:keep]
        key_a, key_b = _keys(module, name)
        out[key_a], out[key_b] = a.to(delta.dtype), b.to(delta.dtype)
        dropped = float((s[keep:] ** 2).sum()) * scaling**2
        norm = float((s**2).sum()) * scaling**2
        dropped_total += dropped
        norm_total += norm
        errors[module] = math.sqrt(dropped / norm) if norm > 0 else 0.0
    relative = math.sqrt(dropped_total / norm_total) if norm_total > 0 else 0.0
    return LoraFactorisation(out, rank, float(scaling), relative, errors)


def concatenate_factors(members: Sequence[Mapping[str, Tensor]], *, scalings: Sequence[float],
                        weights: Sequence[float] | None = None, scaling: float = 1.0,
                        name: str = "signmix") -> LoraFactorisation:
    """Returns the exact factors of the weighted sum of the members' updates: ranks add up.

    ``Σ_i w_i s_i B_i A_i = [w_1 s_1 B_1 | … | w_k s_k B_k] / scaling · [A_1; …; A_k] · scaling``,
    so the merged adapter has rank ``Σ r_i`` and reproduces the weighted average of ΔW
    exactly (error 0). Weights are normalised to sum to 1 (uniform when omitted), as in
    :func:`trainables.mix_and_prune.average_weights`; only linear merges can be kept exact.

    Args:
        members: LoRA state dicts with the same adapted modules (ranks may differ).
        scalings: each member's ``alpha / r`` (a float per member).
        weights: one weight >= 0 per member.
        scaling: the scaling of the result (its ``alpha`` is ``scaling * rank``).
    """
    if not members:
        raise ValueError("cannot concatenate the factors of no adapters")
    if len(scalings) != len(members):
        raise ValueError(f"got {len(scalings)} scalings for {len(members)} members")
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"got {len(weights)} weights for {len(members)} members")
    if any(not math.isfinite(float(w)) or float(w) < 0 for w in weights) or sum(float(w) for w in weights) <= 0:
        raise ValueError(f"weights must be finite and >= 0 with a positive sum, got {list(weights)}")
    total = sum(float(w) for w in weights)
    factors = [lora_factors(m) for m in members]
    modules = set(factors[0])
    for i, f in enumerate(factors[1:], start=1):
        if set(f) != modules:
            odd = sorted(modules ^ set(f))[0]
            raise ValueError(f"member {i} adapts other modules than member 0: {odd!r} is only in one of them")
    ranks = {sum(f[m][0].shape[0] for f in factors) for m in modules}
    if len(ranks) != 1:
        raise ValueError(f"the members' ranks sum to different values per module ({sorted(ranks)}); "
                         "concatenation needs one rank per member for every module")
    out: dict[str, Tensor] = {}
    for module in sorted(modules):
        a_parts, b_parts = [], []
        for f, w, s in zip(factors, weights, scalings):
            a, b = f[module]
            a_parts.append(a.detach())
            b_parts.append(b.detach() * (float(w) / total * float(s) / scaling))
        key_a, key_b = _keys(module, name)
        out[key_a], out[key_b] = torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
    return LoraFactorisation(out, ranks.pop(), float(scaling), 0.0, {m: 0.0 for m in modules})
