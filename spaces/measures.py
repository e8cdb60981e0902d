"""Conflict measures between adapters, and the subset value of each: which one predicts a merge?

Raw weight FSD predicts nothing on adapters trained from one initialisation (every pair sits
at 0.27-0.29: the signs are mostly the initialisation's). These measures look where conflict
shows instead (Zhou et al. 2026, "Demystifying Mergeability"; SyMerge; M-Loss). Every one is
oriented the same way: **higher means more conflict**, so a measure that predicts correlates
*negatively* with the mixture's accuracy, as today's gate rule expects.

- ``weight_fsd``: FSD of the adapters' weights (LoRA: of ΔW), the paper's measure.
- ``delta_fsd``: FSD of each adapter's delta from the shared initialisation (the signs TIES
  elects over); on LoRA ΔW it is ``weight_fsd`` (every LoRA starts at ΔW = 0).
- ``activation_fsd``: FSD of the adapters' *effects* on the hidden states (adapted minus base,
  each adapter layer, mean over the tokens of each probe example).
- ``cross_head``: the accuracy a domain's head loses when it reads another domain's adapter
  instead of its own, on its probe examples, averaged over both directions of a pair.
- ``merge_gap``: for one proposed mixture, the fraction of probe examples on which the merged
  model's prediction differs from the members' ensemble (mean of their probabilities). It
  needs a forward pass per mixture; the others are pairwise matrices computed once.

The subset value of a pairwise measure is its mean over the subset's pairs (``mean_pairwise``,
as for FSD). Only arrays and tensors in, numbers out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from spaces.fsd import fsd_matrix, layer_of, sign_vector

if TYPE_CHECKING:
    from torch import Tensor

# name -> one line a user reads (CLI help, errors, the README's table)
MEASURES: dict[str, str] = {
    "weight_fsd": "FSD of the adapters' weights (LoRA: of ΔW)",
    "delta_fsd": "FSD of the adapters' deltas from their shared initialisation",
    "activation_fsd": "FSD of the adapters' effects on the hidden states, on probe examples",
    "cross_head": "accuracy a domain's head loses on another domain's adapter, on probe examples",
    "merge_gap": "disagreement of the merged model with its members' ensemble, on probe examples (per mixture)",
}
# The measures held as pairwise matrices, computed once per adapter set: what the gate may track.
# The paper's measure: the FSD of the adapters' weights, read from the sign index (no forward pass).
WEIGHT_FSD = "weight_fsd"
PAIRWISE_MEASURES = (WEIGHT_FSD, "delta_fsd", "activation_fsd", "cross_head")
# The measures that need forward passes on probe examples.
PROBE_MEASURES = ("activation_fsd", "cross_head", "merge_gap")
DEFAULT_PROBE_SIZE = 128
PROBE_SIZE_RANGE = (8, 4096)


def check_measure_names(names: Sequence[str], *, field_name: str) -> list[str]:
    """``names`` with ``all`` expanded, in :data:`MEASURES` order; a ValueError naming the field
    and the measures when one is unknown."""
    if list(names) == ["all"]:
        return list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise ValueError(f"{field_name}: unknown measure {unknown[0] if unknown else '(none)'!r}; the measures are "
                         f"{', '.join(MEASURES)} (or all)")
    return [n for n in MEASURES if n in names]


def check_probe_size(size: object, *, field_name: str) -> int:
    """``size`` if it is an integer in :data:`PROBE_SIZE_RANGE`, else a ValueError naming the field."""
    low, high = PROBE_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not low <= size <= high:
        raise ValueError(f"{field_name}: got {size!r}: the probe size must be an integer in [{low}, {high}] "
                         f"examples per domain (default {DEFAULT_PROBE_SIZE})")
    return int(size)


@dataclass(frozen=True)
class PairwiseMeasure:
    """One measure over a set of adapters: a symmetric [N, N] matrix (zero diagonal), its
    per-layer matrices where the measure has layers, and what computing it cost in seconds."""

    name: str
    names: tuple[str, ...]
    matrix: np.ndarray
    per_layer: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.matrix.shape != (n, n):
            raise ValueError(f"{self.name}: {n} adapters need a {n}x{n} matrix, got {self.matrix.shape}")
        object.__setattr__(self, "_position", {name: i for i, name in enumerate(self.names)})

    def indices(self, members: Sequence[str]) -> list[int]:
        position = self._position  # type: ignore[attr-defined]
        for m in members:
            if m not in position:
                raise ValueError(f"unknown adapter {m!r}; the measure {self.name} holds {list(self.names)}")
        return [position[m] for m in members]

    def subset(self, members: Sequence[str]) -> float:
        """The mean over the unordered pairs of ``members`` (0.0 for fewer than two)."""
        return mean_pairwise(self.matrix, self.indices(members))

    def row_means(self) -> dict[str, float]:
        """Each adapter's mean value to the others (the greedy warm start's order)."""
        n = len(self.names)
        if n < 2:
            return {name: 0.0 for name in self.names}
        sums = np.nansum(self.matrix, axis=1) / (n - 1)
        return {name: float(sums[i]) for i, name in enumerate(self.names)}

    def to_json(self) -> dict:
        return {"name": self.name, "names": list(self.names), "matrix": self.matrix.tolist(),
                "per_layer": {k: v.tolist() for k, v in self.per_layer.items()}, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Mapping) -> PairwiseMeasure:
        return cls(name=data["name"], names=tuple(data["names"]), matrix=np.asarray(data["matrix"], dtype=np.float64),
                   per_layer={k: np.asarray(v, dtype=np.float64) for k, v in data.get("per_layer", {}).items()},
                   seconds=float(data.get("seconds", 0.0)))


def mean_pairwise(matrix: np.ndarray, idx: Sequence[int]) -> float:
    """The mean of ``matrix`` over the unordered pairs of ``idx`` (NaN entries skipped; 0.0 for
    fewer than two members)."""
    idx = list(idx)
    if len(idx) < 2:
        return 0.0
    rows, cols = np.triu_indices(len(idx), k=1)
    sub = np.asarray(matrix)[np.ix_(idx, idx)][rows, cols]
    finite = sub[np.isfinite(sub)]
    return float(finite.mean()) if finite.size else float("nan")


def _layer_order(name: str) -> tuple:
    return (not name.startswith("layer."), int(name.split(".")[1]) if name.startswith("layer.") else 0, name)


def sign_fsd_by_layer(tensors: Mapping[str, Mapping[str, Tensor]]) -> tuple[tuple[str, ...], np.ndarray,
                                                                             dict[str, np.ndarray]]:
    """FSD of every pair of N same-layout tensor sets, overall and per :func:`~spaces.fsd.layer_of` group.

    The overall matrix counts conflicts over every position (the paper's FSD); a layer's
    matrix only over that layer's positions.

    Args:
        tensors: name -> (key -> tensor); the same keys and shapes in each.

    Returns:
        ``(names, matrix, per_layer)``: the sorted names, the [N, N] FSD and layer -> [N, N] FSD.
    """
    import torch  # torch: heavy, only where tensors are made


    names = tuple(sorted(tensors))
    if not names:
        raise ValueError("cannot compute FSD of no adapters")
    keys = sorted(tensors[names[0]])
    for name in names[1:]:
        if sorted(tensors[name]) != keys:
            raise ValueError(f"{names[0]!r} and {name!r} have different parameters")
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(layer_of(key), []).append(key)
    total = np.zeros((len(names), len(names)))
    count = 0
    per_layer = {}
    for layer in sorted(groups, key=_layer_order):
        signs = torch.stack([sign_vector({k: tensors[n][k] for k in groups[layer]}) for n in names])
        p = signs.shape[1]
        if p == 0:
            continue
        layer_fsd = fsd_matrix(signs).numpy()
        per_layer[layer] = layer_fsd
        total += layer_fsd * p
        count += p
    if count == 0:
        raise ValueError("cannot compute FSD of tensors with no values")
    return names, total / count, per_layer


def weight_fsd(weights: Mapping[str, Mapping[str, Tensor]], *, seconds: float = 0.0) -> PairwiseMeasure:
    """``weight_fsd``: the FSD of the adapters' own weights (pass ΔW for LoRA), with per-layer values."""
    names, matrix, per_layer = sign_fsd_by_layer(weights)
    return PairwiseMeasure("weight_fsd", names, matrix, per_layer, seconds)


def deltas(weights: Mapping[str, Tensor], init: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One adapter's delta from the initialisation, ``w - init`` per tensor."""
    if set(weights) != set(init):
        first = min(set(weights) ^ set(init))
        raise ValueError(f"the adapter and its initialisation have different parameters: {first!r}")
    return {k: weights[k].float() - init[k].float() for k in weights}


def delta_fsd(weights: Mapping[str, Mapping[str, Tensor]], init: Mapping[str, Tensor] | None, *,
              seconds: float = 0.0) -> PairwiseMeasure:
    """``delta_fsd``: the FSD of the adapters' deltas from ``init``, their shared initialisation.

    ``init`` None means the deltas are the weights themselves (LoRA's ΔW, which starts at 0).
    """
    if init is None:
        names, matrix, per_layer = sign_fsd_by_layer(weights)
    else:
        names, matrix, per_layer = sign_fsd_by_layer({n: deltas(w, init) for n, w in weights.items()})
    return PairwiseMeasure("delta_fsd", names, matrix, per_layer, seconds)


def activation_fsd(effects: Mapping[str, Mapping[str, Tensor]], *, seconds: float = 0.0) -> PairwiseMeasure:
    """``activation_fsd``: the FSD of the adapters' effects on the hidden states.

    Args:
        effects: adapter -> (``"layer.L"`` -> [probe examples, hidden] adapted minus base hidden
            states of layer L, each row the mean over an example's tokens); the same probe
            examples, in the same order, for every adapter.
    """
    names, matrix, per_layer = sign_fsd_by_layer(effects)
    return PairwiseMeasure("activation_fsd", names, matrix, per_layer, seconds)


def cross_head(scores: np.ndarray, names: Sequence[str], *, seconds: float = 0.0) -> PairwiseMeasure:
    """``cross_head``: accuracy lost when domain j's head reads adapter i instead of j's own.

    Args:
        scores: [N, N] accuracy of adapter i (row) with domain j's head on j's probe examples
            (column); NaN where domain j has no head or no data.

    Returns:
        The symmetric matrix ``((S[j,j] - S[i,j]) + (S[i,i] - S[j,i])) / 2`` (one direction when
        the other is NaN): how much each domain loses reading the other's adapter.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(names), len(names)):
        raise ValueError(f"{len(names)} adapters need a {len(names)}x{len(names)} score matrix, got {scores.shape}")
    loss = np.diag(scores)[None, :] - scores  # loss[i, j]: domain j's head on adapter i instead of j
    both = np.stack([loss, loss.T])
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(both)
        matrix = np.where(valid.any(axis=0), np.nansum(np.where(valid, both, 0.0), axis=0)
                          / np.maximum(valid.sum(axis=0), 1), np.nan)
    np.fill_diagonal(matrix, 0.0)
    order = np.argsort(list(names), kind="stable")
    sorted_names = tuple(names[i] for i in order)
    return PairwiseMeasure("cross_head", sorted_names, matrix[np.ix_(order, order)], {}, seconds)


def ensemble_predictions(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The members' ensemble: argmax of the mean of their [n, classes] probabilities."""
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in member_probs]), axis=0).argmax(axis=1)


def merge_gap(merged_probs: Mapping[str, np.ndarray], member_probs: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """``merge_gap`` of one mixture: the fraction of probe examples on which the merged model's
    prediction differs from the members' ensemble, averaged over the targets.

    Args:
        merged_probs: target -> [n, classes] class probabilities of the merged model with the
            target's head on the target's probe examples.
        member_probs: target -> member -> the same for each member's own adapter.
    """
    if not merged_probs:
        raise ValueError("merge_gap needs at least one target")
    gaps = []
    for target, probs in merged_probs.items():
        probs = np.asarray(probs)
        ensemble = ensemble_predictions(list(member_probs[target].values()))
        if probs.shape[0] != ensemble.shape[0]:
            raise ValueError(f"target {target!r}: {probs.shape[0]} merged predictions but {ensemble.shape[0]} "
                             "ensemble predictions; both must cover the same probe examples")
        gaps.append(float((probs.argmax(axis=1) != ensemble).mean()))
    return float(np.mean(gaps))


def probe_rows(n_rows: int, size: int, seed: int) -> list[int]:
    """``size`` row indices of a split of ``n_rows`` rows, drawn without replacement, seeded
    (all rows, sorted, when the split is smaller), sorted."""
    if n_rows <= size:
        return list(range(n_rows))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_rows, size=size, replace=False))


def measures_fingerprint(parts: Mapping) -> str:
    """A stable hash of what a cached measure depends on (adapters' fingerprints, probe settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
