"""Can these adapters be mixed? Same architecture, and (for averaging) one shared initialisation.

The store checks it on every load and the imports before they write; it sits beside both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from spaces.errors import StoreError

if TYPE_CHECKING:
    from torch import Tensor

# (field of an `adapters` config, words for it, fix); compared in this order, first difference reported
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("architecture", "method", "mix adapters of one method only"),
    ("r", "LoRA rank", "mix LoRA adapters of one rank (the merged update is factorised back to that rank)"),
    ("alpha", "LoRA alpha",
     "mix LoRA adapters of one alpha (retrain or rescale one of them)"),
    ("reduction_factor", "reduction factor", "mix bottleneck adapters of one reduction factor"),
    ("non_linearity", "non-linearity", "mix adapters with one non-linearity"),
    ("selfattn_lora", "target modules (self-attention)", "mix LoRA adapters that adapt the same modules"),
    ("attn_matrices", "target modules (attention matrices)", "mix LoRA adapters that adapt the same modules"),
    ("intermediate_lora", "target modules (intermediate)", "mix LoRA adapters that adapt the same modules"),
    ("output_lora", "target modules (output)", "mix LoRA adapters that adapt the same modules"),
    ("mh_adapter", "placement (after attention)", "mix adapters placed alike"),
    ("output_adapter", "placement (after the feed-forward block)", "mix adapters placed alike"),
    ("leave_out", "left-out layers", "mix adapters that cover the same layers"),
)
# fields that do not change which parameters exist or what they mean at inference
_IGNORED = {"dropout", "init_weights", "init_weights_seed", "dtype"}


def check_same_architecture(configs: Mapping[str, Mapping[str, Any]], *, lora_on_delta: bool = False) -> None:
    """Raise a StoreError naming the first two adapters and the field where their architectures differ.

    Args:
        configs: adapter name -> ``adapters`` config dict (``adapter_config.json``'s ``config``,
            or :attr:`ImportedAdapter.config`).
        lora_on_delta: LoRA members merged on ΔW may differ in rank and alpha.
    """
    names = sorted(configs)
    if len(names) < 2:
        return
    first = names[0]
    ref = _normalised(configs[first])
    for other in names[1:]:
        cfg = _normalised(configs[other])
        for key, words, fix in _FIELDS:
            if lora_on_delta and key in ("r", "alpha") and ref.get("architecture") == cfg.get("architecture") == "lora":
                continue
            if ref.get(key) != cfg.get(key):
                raise StoreError(f"adapters {first!r} and {other!r} cannot be mixed: their {words} ({key}) is "
                                 f"{ref.get(key)!r} in {first!r} but {cfg.get(key)!r} in {other!r}; {fix}")
        skip = {k for k, _, _ in _FIELDS} | _IGNORED
        for key in sorted((set(ref) | set(cfg)) - skip):
            if ref.get(key) != cfg.get(key):
                raise StoreError(f"adapters {first!r} and {other!r} cannot be mixed: their adapter config field "
                                 f"{key!r} is {ref.get(key)!r} in {first!r} but {cfg.get(key)!r} in {other!r}; "
                                 "mix adapters of one configuration")


def _normalised(config: Mapping[str, Any]) -> dict:
    """``adapters`` leaves ``architecture`` None for bottleneck adapters: name it."""
    out = dict(config)
    if out.get("architecture") is None and "reduction_factor" in out:
        out["architecture"] = "bottleneck"
    return out


# Calibrated by tests/benchmarks/init_fsd.py (MiniLM-L6, books and dvd, 15 steps of batch 8,
# seeds 0 and 1): one initialisation, two domains: seq_bn 0.100, LoRA A factors 0.042;
# independent initialisations: 0.487 to 0.495 (seq_bn), 0.494 to 0.496 (LoRA A), before and
# after training. FSD on LoRA's ΔW is about 0.50 in every case: it cannot tell them apart.
# Longer training moves the shared-initialisation FSD up: the threshold leaves room for it.
INDEPENDENT_INIT_FSD = 0.5
SHARED_INIT_THRESHOLD = 0.35


@dataclass(frozen=True)
class InitialisationReport:
    """Pairs of adapters whose FSD says they did not start from one initialisation."""

    threshold: float
    suspects: tuple[tuple[str, str, float], ...]  # (name, name, FSD), largest FSD first

    @property
    def shared(self) -> bool:
        return not self.suspects

    def message(self) -> str:
        """Returns one line for the user: what was found, the numbers, and what follows."""
        if self.shared:
            return f"all adapters look like they share one initialisation (every pairwise FSD < {self.threshold:.2f})"
        pairs = ", ".join(f"{a}/{b} {fsd:.3f}" for a, b, fsd in self.suspects[:5])
        more = f" and {len(self.suspects) - 5} more" if len(self.suspects) > 5 else ""
        return (f"{len(self.suspects)} pair(s) of adapters did not start from one initialisation: FSD {pairs}{more} "
                f">= {self.threshold:.2f} (independent initialisations give about {INDEPENDENT_INIT_FSD:.2f}); "
                "averaging them mixes unrelated coordinates, and task arithmetic, TIES and DARE need the "
                "shared initialisation")


def initialisation_weights(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Returns the part of an adapter that keeps the trace of its initialisation, for the FSD
    :func:`shared_initialisation_check` reads: a LoRA's ``lora_A`` factors (``B`` starts at 0 and
    ΔW = B·A takes the signs the data gives ``B``: ΔW from one initialisation is as sign-different
    as from two, tests/benchmarks/init_fsd.py), every parameter of any other adapter."""
    a_factors = {k: t for k, t in weights.items() if ".lora_A" in k}
    return a_factors if a_factors else dict(weights)


def shared_initialisation_check(matrix: Tensor, names: Sequence[str], *,
                                threshold: float = SHARED_INIT_THRESHOLD) -> InitialisationReport:
    """Returns the pairs whose FSD is at or above ``threshold``: they look independently initialised.

    Args:
        matrix: the [N, N] FSD matrix of the adapters' :func:`initialisation_weights`
            (``SignIndex.from_weights({n: initialisation_weights(w) ...}).matrix``); for
            bottleneck adapters that is the ordinary FSD matrix. Not ΔW for LoRA: on ΔW,
            adapters from one initialisation also sit near 0.5.
        names: the N adapter names, in the matrix's order.
        threshold: in (0, 1]; see :data:`SHARED_INIT_THRESHOLD` for how it was chosen.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    n = len(names)
    if tuple(matrix.shape) != (n, n):
        raise ValueError(f"matrix has shape {tuple(matrix.shape)} for {n} names; it must be {n}x{n}")
    suspects = [(names[i], names[j], float(matrix[i, j])) for i in range(n) for j in range(i + 1, n)
                if float(matrix[i, j]) >= threshold]
    suspects.sort(key=lambda t: (-t[2], t[0], t[1]))
    return InitialisationReport(float(threshold), tuple(suspects))
