"""Per-domain sign masks and rescalers over a shared body: EMR-Merging, TALL masks, 1-bit packing.

Pure tensor maths in the style of PEFT's ``utils/merge_utils.py``, over dicts that map a
parameter name to its stacked member deltas ``[members, *shape]`` (the input of
:mod:`spaces.merge_maths`; a delta is ``theta_i - init`` from the adapters' shared
initialisation, :mod:`trainables.initialisation`). A mask is a dict of the same names with a
boolean ``[members, *shape]`` (or, for one domain, ``[*shape]``).

- **EMR-Merging** (Huang et al., NeurIPS 2024): :func:`emr_elect` the unified task vector
  ``tau_uni = sgn(sum_t tau_t) * max_t{|tau_t| : tau_t agrees with that sign}``;
  :func:`emr_masks` ``M_t = (tau_t * tau_uni > 0)``; :func:`emr_rescalers`
  ``lambda_t = sum|tau_t| / sum|M_t * tau_uni|``. Domain t is served by
  ``init + lambda_t * M_t * tau_uni``.
- **TALL masks** (Wang et al., ICML 2024): :func:`tall_masks`
  ``m_t = |tau_t| >= lambda_t * |tau_MTL - tau_t|`` over the merged (task-arithmetic) delta
  ``tau_MTL``; domain t is served by ``init + m_t * tau_MTL``, ``lambda_t`` chosen on t's
  validation split (the paper's grid :data:`TALL_LAMBDAS`, :func:`choose_on_validation`).
- **1 bit per parameter**: :func:`pack_mask`/:func:`unpack_mask`, numpy's ``packbits`` layout
  (most significant bit first, the last byte zero-padded), which is how the TALL code stores
  its masks; :func:`packed_bytes` counts what a mask costs.

Where we differ from the reference code (harveyhuang18/EMR_Merging ``emr_merge``,
nik-dim/tall_masks ``generate_task_masks``), on purpose:

- **EMR's rescaler sums over all entries of the adapter** (the paper's Eq.:
  ``sum|tau_t| / sum|M_t * tau_uni|`` over the whole model). The reference code sums, over
  parameter tensors, each tensor's *mean* ``|.|``, which weighs a 32-entry bias as much as a
  large weight matrix; ``reduction="tensor_means"`` reproduces it.
- **EMR's elected sign on an exact tie** (``sum_t tau_t == 0``) is the paper's ``sgn(0) = 0``:
  the unified entry is 0 and no mask keeps it. The reference code elects -1 there
  (``(sum > 0) * 2 - 1``), and our TIES (:func:`spaces.merge_maths.elect_and_merge`) +1; with
  real-valued deltas such ties are entries where every member is 0, or exact cancellations.
- **EMR's rescaler where the mask keeps nothing** (a member whose non-zero entries are all
  outvoted) is 1.0, not the reference's ``x / 0 = inf``: the masked vector is zero, so the
  domain's weights are ``init`` whatever the scalar, and 1.0 is the neutral start for an
  output rescaler (:func:`choose_on_validation`).
- **TALL's comparison is the paper's** ``>=``; the code uses ``>``. They differ only where
  ``|tau_t| == lambda_t * |tau_MTL - tau_t|`` exactly; where both sides are 0 the served
  entry ``m_t * tau_MTL`` is 0 either way. A one-member "merge" (``tau_MTL = tau_t``) keeps
  every entry under ``>=``, so a domain with its own body is served exactly.
- **TALL's ``tau_MTL`` is whatever merged delta the body holds** (``body - init``): the
  task-arithmetic delta ``lam * mean_t tau_t`` in this project's weights, or a TIES delta (the
  reference code's ``use_ties``). The reference code's task arithmetic is the unscaled sum,
  ``lam = k`` here (:mod:`trainables.merging`).
- The mask and rescaler formulas act on every parameter of the adapter body alike (the papers
  act on every parameter of the model); what that means for bottleneck biases, heads and
  LoRA is said in :mod:`trainables.domain_serving`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

if TYPE_CHECKING:  # torch is imported where it is used, as in spaces.merge_maths
    from torch import Tensor

# The ways a group's shared body serves each of its domains, cheapest first (plan.serving_options;
# trainables.serving_options scores them): the body as it is, a per-domain scalar on the adapter's
# output, EMR-Merging's body with a domain's agreement mask and scalar, TALL's mask over the body.
SERVING_OPTIONS: tuple[str, ...] = ("plain", "rescaled", "emr", "tall")
# The options that serve a domain with its own 1-bit mask (its own set of weights).
MASKED_OPTIONS: frozenset[str] = frozenset({"emr", "tall"})
# The lambdas the TALL paper's code tries per task (tall_masks: construct_tall_mask).
TALL_LAMBDAS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)
# Multiples of EMR's formula start that a rescaler chosen on validation tries.
RESCALER_FACTORS: tuple[float, ...] = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)


def _members(deltas: Mapping[str, Tensor]) -> int:
    """Returns the member count of stacked deltas; raises ValueError unless every parameter has the same one."""
    if not deltas:
        raise ValueError("deltas is empty: give at least one parameter's stacked member deltas")
    counts = {key: (t.shape[0] if t.dim() > 0 else None) for key, t in deltas.items()}
    first_key = next(iter(counts))
    n = counts[first_key]
    for key, count in counts.items():
        if count is None or count < 1:
            raise ValueError(f"deltas[{key!r}] must be [members, *shape] with at least one member, "
                             f"got shape {tuple(deltas[key].shape)}")
        if count != n:
            raise ValueError(f"deltas[{key!r}] has {count} members but deltas[{first_key!r}] has {n}")
        if not deltas[key].is_floating_point():
            raise ValueError(f"deltas[{key!r}] must be a float tensor, got {deltas[key].dtype}")
    return n


def _check_like(name: str, given: Mapping[str, Tensor], deltas: Mapping[str, Tensor], stacked: bool) -> None:
    if set(given) != set(deltas):
        odd = sorted(set(given) ^ set(deltas))
        raise ValueError(f"{name} and deltas must have the same parameters; {odd[0]!r} is only in one of them")
    for key, t in deltas.items():
        want = tuple(t.shape) if stacked else tuple(t.shape[1:])
        if tuple(given[key].shape) != want:
            raise ValueError(f"{name}[{key!r}] has shape {tuple(given[key].shape)}, expected {want}")


def emr_elect(deltas: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns EMR-Merging's unified task vector of stacked member deltas.

    Args:
        deltas: parameter name -> ``[members, *shape]`` float deltas from the shared initialisation.

    Returns:
        Parameter name -> ``[*shape]``: per entry the sign of the members' sum (0 on an exact
        tie) times the largest ``|delta|`` among the members whose delta has that sign; 0
        where no member agrees. Same dtype as the deltas.
    """
    import torch

    _members(deltas)
    out: dict[str, Tensor] = {}
    for key, d in deltas.items():
        sign = torch.sign(d.sum(dim=0))
        agree = d * sign > 0
        out[key] = sign * torch.where(agree, d.abs(), torch.zeros_like(d)).amax(dim=0)
    return out


def emr_masks(deltas: Mapping[str, Tensor], unified: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns EMR-Merging's per-member masks: where a member's delta has the unified vector's sign.

    Args:
        deltas: parameter name -> ``[members, *shape]`` float deltas.
        unified: :func:`emr_elect` of ``deltas`` (parameter name -> ``[*shape]``).

    Returns:
        Parameter name -> boolean ``[members, *shape]``, True where ``delta * unified > 0``
        (so False where either is 0, as in the reference code).
    """
    _members(deltas)
    _check_like("unified", unified, deltas, stacked=False)
    return {key: d * unified[key].to(d.dtype) > 0 for key, d in deltas.items()}


def emr_rescalers(deltas: Mapping[str, Tensor], unified: Mapping[str, Tensor], masks: Mapping[str, Tensor], *,
                  reduction: Literal["sum", "tensor_means"] = "sum") -> list[float]:
    """Returns EMR-Merging's rescaler of each member: ``sum|tau_t| / sum|M_t * tau_uni|``.

    Args:
        deltas: parameter name -> ``[members, *shape]`` float deltas.
        unified: :func:`emr_elect` of ``deltas``.
        masks: :func:`emr_masks` (boolean ``[members, *shape]``).
        reduction: ``"sum"`` (the paper): both sums run over every entry of every parameter;
            ``"tensor_means"`` (the reference code): each sum is a sum over parameters of the
            parameter's mean ``|.|``.

    Returns:
        One float per member, computed in float64; 1.0 for a member whose masked unified
        vector is all zero (its served weights do not depend on the scalar).
    """
    import torch

    if reduction not in ("sum", "tensor_means"):
        raise ValueError(f"reduction must be 'sum' or 'tensor_means', got {reduction!r}")
    n = _members(deltas)
    _check_like("unified", unified, deltas, stacked=False)
    _check_like("masks", masks, deltas, stacked=True)
    numerator = torch.zeros(n, dtype=torch.float64)
    denominator = torch.zeros(n, dtype=torch.float64)
    for key, d in deltas.items():
        mask = masks[key]
        if mask.dtype != torch.bool:
            raise ValueError(f"masks[{key!r}] must be a bool tensor, got {mask.dtype}")
        own = d.detach().to(torch.float64).abs().reshape(n, -1)
        kept = (mask * unified[key].detach().to(torch.float64)).abs().reshape(n, -1)
        reduce = (lambda t: t.mean(dim=1)) if reduction == "tensor_means" else (lambda t: t.sum(dim=1))
        numerator += reduce(own).cpu()
        denominator += reduce(kept).cpu()
    return [float(num / den) if den > 0 else 1.0 for num, den in zip(numerator.tolist(), denominator.tolist())]


def tall_masks(deltas: Mapping[str, Tensor], merged: Mapping[str, Tensor],
               lambdas: float | Sequence[float]) -> dict[str, Tensor]:
    """Returns TALL masks: where a member's delta outweighs lambda times the merged delta's distance from it.

    Args:
        deltas: parameter name -> ``[members, *shape]`` float deltas ``tau_t``.
        merged: parameter name -> ``[*shape]``, the body's merged delta ``tau_MTL`` (its
            weights minus the shared initialisation).
        lambdas: one lambda >= 0 per member, or one for all of them.

    Returns:
        Parameter name -> boolean ``[members, *shape]``:
        ``|tau_t| >= lambda_t * |tau_MTL - tau_t|``.
    """
    import torch

    n = _members(deltas)
    _check_like("merged", merged, deltas, stacked=False)
    values = [float(lambdas)] * n if isinstance(lambdas, (int, float)) else [float(v) for v in lambdas]
    if len(values) != n:
        raise ValueError(f"lambdas has {len(values)} entries for {n} members; give one per member or one for all")
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"every lambda must be a finite number >= 0, got {v}")
    out: dict[str, Tensor] = {}
    for key, d in deltas.items():
        acc = torch.float64 if d.dtype == torch.float64 else torch.float32
        tau = d.detach().to(acc)
        lam = torch.tensor(values, dtype=acc, device=tau.device).reshape((n,) + (1,) * (tau.dim() - 1))
        out[key] = tau.abs() >= lam * (merged[key].detach().to(device=tau.device, dtype=acc) - tau).abs()
    return out


def member_masks(masks: Mapping[str, Tensor], member: int) -> dict[str, Tensor]:
    """Returns one member's masks (parameter name -> ``[*shape]``) out of stacked masks ``[members, *shape]``."""
    out = {}
    for key, m in masks.items():
        if not -m.shape[0] <= member < m.shape[0]:
            raise ValueError(f"member must be in [0, {m.shape[0]}), got {member}")
        out[key] = m[member]
    return out


# ---------------------------------------------------------------- 1 bit per parameter


def pack_mask(mask: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Returns a boolean mask packed 8 entries to a byte, and its shape.

    Args:
        mask: a boolean tensor of any shape (on any device).

    Returns:
        ``(packed, shape)``: a CPU uint8 tensor of ``ceil(numel / 8)`` bytes holding the
        row-major entries most significant bit first, the last byte padded with zeros
        (``numpy.packbits`` of the flattened mask), and ``mask``'s shape.
    """
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    flat = mask.detach().reshape(-1).cpu()
    padded = torch.zeros(packed_bytes(flat.numel()) * 8, dtype=torch.uint8)
    padded[:flat.numel()] = flat.to(torch.uint8)
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.reshape(-1, 8) * bits).sum(dim=1, dtype=torch.uint8), tuple(mask.shape)


def unpack_mask(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Returns the boolean mask of ``shape`` that :func:`pack_mask` packed into ``packed``.

    Raises:
        ValueError: ``packed`` is not a 1-D uint8 tensor of ``ceil(prod(shape) / 8)`` bytes.
    """
    import torch

    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed must be a 1-D uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)} "
                         f"of shape {tuple(getattr(packed, 'shape', ()))}")
    if packed.numel() != packed_bytes(numel):
        raise ValueError(f"a mask of shape {shape} packs into {packed_bytes(numel)} bytes, got {packed.numel()}")
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=packed.device)
    flat = (packed.reshape(-1, 1) & bits) != 0
    return flat.reshape(-1)[:numel].reshape(shape)


def packed_bytes(numel: int) -> int:
    """Returns the bytes a mask of ``numel`` entries takes packed: ``ceil(numel / 8)``."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return (int(numel) + 7) // 8


def masks_bytes(masks: Mapping[str, Tensor]) -> int:
    """Returns the bytes one domain's masks take packed, each parameter packed on its own (:func:`pack_mask`)."""
    return sum(packed_bytes(m.numel()) for m in masks.values())


# ---------------------------------------------------------------- choosing on validation


def rescaler_candidates(start: float, factors: Sequence[float] = RESCALER_FACTORS) -> list[float]:
    """Returns the rescalers to try around ``start`` (EMR's formula): ``start * f`` for each factor, sorted, unique."""
    if not math.isfinite(start) or start <= 0:
        raise ValueError(f"start must be a finite number > 0, got {start}")
    if any(not math.isfinite(f) or f <= 0 for f in factors) or not factors:
        raise ValueError(f"factors must be finite numbers > 0, at least one, got {list(factors)}")
    return sorted({float(start) * float(f) for f in factors})


def choose_on_validation(score: Callable[[float], float], candidates: Sequence[float],
                         start: float) -> tuple[float, dict[float, float]]:
    """Returns the candidate with the best validation score, and every candidate's score.

    Args:
        score: candidate -> its validation score (higher is better, e.g. accuracy); called once
            per candidate, in sorted order. A NaN score never wins.
        candidates: the values to try (rescalers from :func:`rescaler_candidates`, or
            TALL's :data:`TALL_LAMBDAS`).
        start: where the search starts (EMR's formula for a rescaler); of equally good
            candidates the one closest to it wins, then the smaller one.

    Returns:
        ``(chosen, {candidate: score})``; ``start`` itself when every score is NaN.
    """
    values = sorted({float(c) for c in candidates})
    if not values:
        raise ValueError("candidates is empty: give at least one value to try")
    scores = {c: float(score(c)) for c in values}
    finite = [c for c in values if not math.isnan(scores[c])]
    if not finite:
        return float(start), scores
    best = max(scores[c] for c in finite)
    chosen = min((c for c in finite if scores[c] == best), key=lambda c: (abs(c - start), c))
    return chosen, scores
