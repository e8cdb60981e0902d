"""Serving one domain from a shared body: its sign mask and rescaler, in weights or per row of a batch.

A shared body (a group's merged adapter, ``init + merged_delta`` as
:func:`trainables.merging.merge_adapters` writes it) serves each of its domains in one of
three ways, all built from :mod:`spaces.domain_masks`:

- **a masked body** (:func:`masked_body`): ``init + rescaler * mask * (body - init)``, the
  domain's own adapter weights. EMR-Merging: the body is ``init + tau_uni``
  (:func:`emr_merge`), the mask EMR's agreement mask, the rescaler EMR's scalar; TALL: the
  body is the group's merged body, the mask TALL's, the rescaler 1. A mask costs one bit per
  adapter parameter (1/32 of a float32 adapter), but each masked domain is its own set of
  weights: rows of different masked domains go through different weights.
- **a rescaled body** (:func:`per_row_adapter_scale`): the body's weights unchanged, the
  bottleneck adapter's output (the term it adds to the residual stream) multiplied by one
  scalar per domain, applied per row, so a batch that mixes domains still goes through one
  body in one pass. EMR's formula gives the start; the scalar is chosen on the domain's
  validation split (:func:`spaces.domain_masks.choose_on_validation`).
- both: a masked body whose output is rescaled.

What the papers, which act on full models, leave open for this project's adapters:

- **Bottleneck biases** are masked and rescaled like weights: both papers act on every
  parameter of the task vector, biases included; a bias left unmasked would carry every
  member's conflicting shift to every domain.
- **The head is untouched**: each domain keeps its own trained head (the body is what is
  shared; EMR's language-model code also excludes the classifiers, which differ per task).
  The masks and rescalers cover the adapter body's parameters only.
- **The output rescaler scales the up-projection's output** (``adapter_up``, bias included,
  before the adapter's own ``scaling`` and residual): ``s * up(x)`` is exactly the adapter
  with ``s * W_up`` and ``s * b_up``, so a per-row scalar is a per-domain weight rescale of
  the up-projection, not EMR's rescale of the whole delta (a bottleneck is not linear in its
  weights; EMR's scalar is only the start of the search).
- **LoRA: masks act on ΔW = B·A·alpha/r**, not on the factors. The factors' signs mean
  nothing (B·A = (-B)·(-A)) and signmix compares and merges LoRA on ΔW
  (:mod:`trainables.lora`), so the sign agreement is taken there too: pass each module's ΔW
  (init ΔW = 0) to :func:`masked_body` and add the result to the module's weight (or
  factorise it, :func:`trainables.lora.factorise_svd`). A masked ΔW is not of rank r any
  more, and its mask costs ``out * in`` bits per module, more than an r = 4 LoRA's floats
  for a 768-wide model; :func:`per_row_adapter_scale` is for bottleneck adapters only.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from spaces.domain_masks import emr_elect, emr_masks, emr_rescalers, member_masks, pack_mask, tall_masks, unpack_mask
from trainables.merging import check_same_parameters
from trainables.store import ADAPTER_NAME

if TYPE_CHECKING:
    from torch import Tensor


def _acc_dtype(t: Tensor):
    import torch

    return torch.float64 if t.dtype == torch.float64 else torch.float32


def stacked_deltas(members: Sequence[Mapping[str, Tensor]], init: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns parameter name -> ``[members, *shape]``: each member's delta from the shared initialisation,
    in float32 (float64 for float64 members), as :func:`trainables.merging.merge_adapters` computes them."""
    import torch

    check_same_parameters(list(members) + [init])
    out = {}
    for key, reference in members[0].items():
        acc = _acc_dtype(reference)
        base = init[key].detach().to(device=reference.device, dtype=acc)
        out[key] = torch.stack([m[key].detach().to(device=reference.device, dtype=acc) - base for m in members])
    return out


def emr_merge(members: Sequence[Mapping[str, Tensor]],
              init: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[dict[str, Tensor]], list[float]]:
    """Returns EMR-Merging's body ``init + tau_uni``, each member's mask and each member's rescaler.

    Args:
        members: adapters with identical parameter names and shapes, trained from ``init``.
        init: their shared initialisation (:func:`trainables.initialisation.initial_adapter_weights`).

    Returns:
        ``(body, masks, rescalers)``: the body in the first member's dtype; per member, a
        boolean mask per parameter and the scalar of :func:`spaces.domain_masks.emr_rescalers`.
        Member ``t`` is served by ``masked_body(init, body, masks[t], rescalers[t])``.
    """
    deltas = stacked_deltas(members, init)
    unified = emr_elect(deltas)
    masks = emr_masks(deltas, unified)
    rescalers = emr_rescalers(deltas, unified, masks)
    body = {key: (init[key].detach().to(device=u.device, dtype=u.dtype) + u).to(members[0][key].dtype)
            for key, u in unified.items()}
    return body, [member_masks(masks, i) for i in range(len(members))], rescalers


def tall_merge_masks(members: Sequence[Mapping[str, Tensor]], init: Mapping[str, Tensor], body: Mapping[str, Tensor],
                     lambdas: float | Sequence[float]) -> list[dict[str, Tensor]]:
    """Returns each member's TALL mask over ``body`` (the group's merged body, ``init + tau_MTL``).

    Member ``t`` is served by ``masked_body(init, body, masks[t])``; ``lambdas`` as in
    :func:`spaces.domain_masks.tall_masks`.
    """
    deltas = stacked_deltas(members, init)
    check_same_parameters([members[0], body])
    merged = {key: body[key].detach().to(device=d.device, dtype=d.dtype) - init[key].detach().to(d.device, d.dtype)
              for key, d in deltas.items()}
    masks = tall_masks(deltas, merged, lambdas)
    return [member_masks(masks, i) for i in range(len(members))]


def masked_body(init: Mapping[str, Tensor], body: Mapping[str, Tensor], mask: Mapping[str, Tensor],
                rescaler: float = 1.0) -> dict[str, Tensor]:
    """Returns one domain's weights from a shared body: ``init + rescaler * mask * (body - init)``.

    Args:
        init: the adapters' shared initialisation (for LoRA: zero ΔW per module).
        body: the shared body (same names and shapes), e.g. EMR's ``init + tau_uni`` or a
            task-arithmetic body.
        mask: the domain's boolean mask per parameter (same names and shapes).
        rescaler: the domain's scalar (EMR's); 1.0 for TALL.

    Returns:
        A new dict in ``body``'s order, dtypes and devices, computed in float32 (float64 for
        float64 bodies) as :func:`trainables.merging.merge_adapters` composes ``init + delta``.
    """
    import math

    import torch

    if not isinstance(rescaler, (int, float)) or isinstance(rescaler, bool) or not math.isfinite(rescaler):
        raise ValueError(f"rescaler must be a finite number, got {rescaler!r}")
    check_same_parameters([body, init])
    check_same_parameters([body, mask])
    out = {}
    for key, weights in body.items():
        if mask[key].dtype != torch.bool:
            raise ValueError(f"mask[{key!r}] must be a bool tensor, got {mask[key].dtype}")
        acc = _acc_dtype(weights)
        base = init[key].detach().to(device=weights.device, dtype=acc)
        delta = weights.detach().to(acc) - base
        kept = torch.where(mask[key].to(weights.device), delta, torch.zeros_like(delta))
        out[key] = (base + float(rescaler) * kept).to(weights.dtype)
    return out


def pack_domain_mask(mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns one domain's mask packed at 1 bit per parameter (uint8 per parameter, numpy's ``packbits`` layout).

    The shapes are not kept: :func:`unpack_domain_mask` takes them from the body.
    """
    return {key: pack_mask(m)[0] for key, m in mask.items()}


def unpack_domain_mask(packed: Mapping[str, Tensor], body: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns the boolean mask per parameter that :func:`pack_domain_mask` packed, shaped like ``body``.

    Raises:
        ValueError: the packed mask does not cover exactly the body's parameters, or a
            parameter's bytes do not fit its shape.
    """
    if set(packed) != set(body):
        odd = sorted(set(packed) ^ set(body))
        raise ValueError(f"the packed mask and the body must have the same parameters; {odd[0]!r} is only in one "
                         f"of them ({len(odd)} such)")
    return {key: unpack_mask(packed[key], tuple(t.shape)) for key, t in body.items()}


def adapter_up_modules(model, adapter_name: str = ADAPTER_NAME) -> list:
    """Returns the up-projections of bottleneck adapter ``adapter_name`` in ``model`` (one per adapted layer).

    Raises:
        ValueError: the model has no bottleneck adapter of that name (a LoRA, say).
    """
    suffix = f".adapters.{adapter_name}.adapter_up"
    found = [module for name, module in model.named_modules() if name.endswith(suffix)]
    if not found:
        raise ValueError(f"the model has no bottleneck adapter {adapter_name!r} (no module named '*{suffix}'); a "
                         "per-row rescaler scales a bottleneck adapter's output (seq_bn, double_seq_bn)")
    return found


@contextlib.contextmanager
def per_row_adapter_scale(model, scales: Tensor | Sequence[float], adapter_name: str = ADAPTER_NAME) -> Iterator[None]:
    """Within the block, multiply bottleneck adapter ``adapter_name``'s output by one scalar per row of the batch.

    Each up-projection's output ``[batch, ...]`` is multiplied by ``scales[row]``: the same
    as running each row with the adapter's ``W_up`` and ``b_up`` scaled by its scalar, so the
    rows of domains with different rescalers share one body and one forward pass.

    Args:
        model: an ``adapters`` model with the bottleneck adapter active.
        scales: ``[batch]``, one scalar per row of every batch run inside the block (give each
            row its domain's rescaler); or one number for every row of every batch.
        adapter_name: the adapter whose output is scaled.

    Raises:
        ValueError: no such bottleneck adapter; ``scales`` is not one number or 1-D, or not
            finite; a batch inside the block has another number of rows.
    """
    import torch

    row_scales = torch.as_tensor(scales, dtype=torch.float32).detach()
    if row_scales.dim() > 1 or not bool(torch.isfinite(row_scales).all()):
        raise ValueError(f"scales must be one finite number or a 1-D tensor of them, one per row, "
                         f"got {row_scales.tolist()}")
    modules = adapter_up_modules(model, adapter_name)

    def scale(module, inputs, output):
        if row_scales.dim() == 0:
            return output * row_scales.to(device=output.device, dtype=output.dtype)
        if output.shape[0] != row_scales.shape[0]:
            raise ValueError(f"the batch has {output.shape[0]} rows but {row_scales.shape[0]} scales were given")
        s = row_scales.to(device=output.device, dtype=output.dtype)
        return output * s.reshape((-1,) + (1,) * (output.dim() - 1))

    handles = [m.register_forward_hook(scale) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
