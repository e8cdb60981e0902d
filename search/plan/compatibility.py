"""Pairwise distances between domains, the start of a plan: which domains may share a body.

Three measures, each a plain ``{(a, b): distance}`` for :mod:`search.plan.partition`
(smaller: more likely to share a body well); a better measure plugs in as another such
mapping, nothing else changes:

- ``activation_fsd`` (the default): the fraction of sign difference of the two adapters'
  effects on the hidden states of every plan domain's probe examples
  (:func:`spaces.measures.activation_fsd`). On the real FDU-MTL serving pairs it predicts a
  shared body's accuracy (partial Spearman -0.75, BENCHMARKS.md); cross heads do not (-0.07).
  It costs one probe pass per adapter, cross heads one validation pass per ordered pair.
- ``fsd``: the fraction of sign difference of the two adapters' weights (the paper's). On
  adapters trained from one initialisation it hardly varies between pairs (DESIGN.md).
- ``cross_heads``: each adapter scored with the other domain's head on that domain's
  validation split. How much of b's own accuracy a's adapter keeps under b's head, and
  the other way round: ``d(a, b) = (max(0, own_b - cross(a -> b)) + max(0, own_a - cross(b -> a))) / 2``.
  Features that another domain's head can read are features a shared body can serve.

Only numbers and names in and out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence



def fsd_distances(names: Sequence[str], matrix) -> dict[tuple[str, str], float]:
    """An FSD matrix (weights' or activations'; rows and columns in ``names`` order) as pairwise distances."""
    n = len(names)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"{n} names need a {n}x{n} matrix")
    return {(a, b): float(matrix[i][j]) for (i, a), (j, b) in itertools.combinations(enumerate(names), 2)}


def cross_head_distances(own: Mapping[str, float],
                         cross: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Distances from cross-head accuracies.

    Args:
        own: domain -> its own adapter's accuracy with its own head.
        cross: ``(adapter_domain, head_domain)`` -> accuracy of ``adapter_domain``'s adapter
            with ``head_domain``'s head on ``head_domain``'s data, for every ordered pair.
    """
    names = sorted(own)
    out = {}
    for a, b in itertools.combinations(names, 2):
        missing = [pair for pair in ((a, b), (b, a)) if pair not in cross]
        if missing:
            raise ValueError(f"cross lacks {missing}")
        out[(a, b)] = (max(0.0, own[b] - cross[(a, b)]) + max(0.0, own[a] - cross[(b, a)])) / 2
    return out
