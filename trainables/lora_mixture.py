"""How a LoRA store's members are merged (``search.lora_merge``), and the mixture on ΔW.

``delta_svd`` (default): each member's update ``ΔW = B·A·alpha/r`` per adapted module is
merged with the spec's operator, then factorised back to the members' rank by truncated SVD
(:func:`trainables.lora.factorise_svd`), so the mixed adapter keeps the members' shapes and
loads into the same slot; the relative approximation error is reported (``lora_svd_error``).
``factors``: the factors A and B are merged separately like any other weights (signmix before
issue 11; averaging factors adds cross terms: mean(B)·mean(A) is not mean(B·A)).
The exact alternative, concatenating the weighted factors (rank = sum of the ranks,
:func:`trainables.lora.concatenate_factors`), changes the adapter's shape, so it cannot be
evaluated in the search's fixed adapter slot; it is not offered here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from torch import Tensor

    from spaces.spec import MixtureSpec

LORA_MERGES: dict[str, str] = {
    "delta_svd": "merge ΔW = B·A·alpha/r per module, factorise back to the members' rank by truncated SVD",
    "factors": "merge the factors A and B separately, like any other weights",
}
MERGE_ON_DELTA = "delta_svd"  # the LORA_MERGES entry that merges ΔW (the default)


def is_lora_weights(weights: Mapping[str, Tensor]) -> bool:
    """Whether an adapter's weights (``adapters`` keys) are a LoRA's factors."""
    return bool(weights) and all(".loras." in k and k.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for k in weights)


def lora_scaling(adapter_config: Mapping) -> float:
    """Returns ``alpha / r`` of an ``adapters`` LoRA config (``adapter_config.json``'s ``config``)."""
    config = adapter_config.get("config", adapter_config)
    return float(config["alpha"]) / float(config["r"])


def stored_lora_scaling(folder: str | Path) -> float:
    """Returns ``alpha / r`` of the LoRA stored in ``folder`` (its ``adapter_config.json``)."""
    return lora_scaling(json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8")))


def _adapter_name(weights: Mapping[str, Tensor]) -> str:
    """The adapter name in ``adapters``' LoRA keys (``<module>.loras.<name>.lora_A``)."""
    return next(iter(weights)).split(".loras.", 1)[1].split(".", 1)[0]


def build_lora_mixture(member_weights: Sequence[Mapping[str, Tensor]], spec: MixtureSpec, *,
                       scalings: Sequence[float], scaling: float, rank: int) -> tuple[dict[str, Tensor], float]:
    """Returns the LoRA mixture merged on ΔW and factorised to ``rank``, and its relative SVD error.

    Args:
        member_weights: the members' factors (already pruned when the spec prunes members).
        spec: its ``weights``, ``merge_method`` and ``merge_parameters`` are used.
        scalings: each member's ``alpha / r``; ``scaling``, ``rank``: the mixture's (the slot's).

    The operators that merge deltas from a shared initialisation take ``init = 0`` on ΔW
    (every LoRA starts with ``B = 0``: the zero-delta convention of
    :func:`trainables.lora.merge_lora_deltas`), so they need no stored initialisation here.
    """
    # torch, imported on use: the config imports this module for LORA_MERGES alone.
    from trainables.lora import factorise_svd, lora_delta_weights, merge_lora_deltas

    name = _adapter_name(member_weights[0])
    deltas = [lora_delta_weights(w, scaling=s) for w, s in zip(member_weights, scalings)]
    given = ({} if spec.merge_method == "average"
             else {k: v for k, v in spec.merge_parameters.items() if v is not None})
    merged = merge_lora_deltas(deltas, method=spec.merge_method, weights=spec.weights, **given)
    result = factorise_svd(merged, rank=rank, scaling=scaling, name=name)
    dtype = next(iter(member_weights[0].values())).dtype
    return {k: t.to(dtype) for k, t in result.state_dict.items()}, result.relative_error


class LoraSlot:
    """How a trial merges LoRA members on ΔW: each member's scaling, and the rank and scaling
    of the adapter slot the mixture is written into; keeps the last merge's SVD error."""

    def __init__(self, *, scalings: Mapping[str, float], rank: int, scaling: float) -> None:
        self.scalings, self.rank, self.scaling = dict(scalings), int(rank), float(scaling)
        self.relative_error = float("nan")

    @classmethod
    def from_store(cls, store, members: Sequence[str], weights: Mapping[str, Tensor]) -> LoraSlot:
        """The slot of a LoRA store's members (one rank and alpha: the store checks that they agree)."""
        scalings = {m: stored_lora_scaling(store.path(m)) for m in members}
        rank = next(t.shape[0] for k, t in weights.items() if k.endswith("lora_A"))
        return cls(scalings=scalings, rank=rank, scaling=scalings[members[0]])

    def merge(self, members: Sequence[Mapping[str, Tensor]], spec: MixtureSpec) -> dict[str, Tensor]:
        """Returns ``spec``'s members (in its order) merged on ΔW and factorised into this slot."""
        merged, self.relative_error = build_lora_mixture(
            members, spec, scalings=[self.scalings[m] for m in spec.members], scaling=self.scaling, rank=self.rank)
        return merged
