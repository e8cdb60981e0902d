"""One name for each merged function: operators and parameters that provably give the same adapter.

Two mixtures that compute the same adapter are one mixture: one key, one MLflow run, one
evaluation. :func:`make_mixture_spec <spaces.spec.make_mixture_spec>` rewrites every merge
into its canonical form with :func:`canonical_merge` before the key is computed, so the
searcher's repeat check and MLflow's ``signmix.mixture_key`` see one mixture, never two.

The identities (weights are normalised to sum to 1 by every operator, and pruning acts on the
members before the merge or on its result, whatever the operator; ``trainables.merging``):

- ``dare_linear`` / ``dare_ties`` with ``drop_rate`` 0 drop nothing and rescale by 1: they are
  ``task_arithmetic`` / ``ties`` with density 1 at the same λ, and their seed has no effect.
- ``task_arithmetic`` with λ 1 is ``init + Σ w_i (θ_i - init) = Σ w_i θ_i``: the ``average``.
- One member: TIES' sign election keeps every non-zero entry of a single delta, so ``ties``
  with density 1 is ``task_arithmetic``, and ``dare_ties`` is ``dare_linear`` (same drop mask:
  it depends on the seed, the parameter and the member's index only).

They hold for LoRA merged on ΔW too (every LoRA starts at ΔW = 0). What is *not* rewritten,
because it is not the same function: TIES with density below 1 (trimming changes the
delta), DARE with a positive drop rate and several members (the mask depends on the member's
index, and TIES' election on the others), a member of weight 0 (it still shapes DARE's masks
and conflict-layer pruning).
"""

from __future__ import annotations

from typing import Mapping


def canonical_merge(method: str, parameters: Mapping[str, float | int], members: int) -> tuple[str, dict]:
    """Returns ``(method, parameters)`` of the canonical operator that merges like ``method``.

    Args:
        method: a registered merge operator (``spaces.operators.MERGE_OPERATORS``).
        parameters: the operator's parameters, already checked and completed with their
            defaults (``density``, ``drop_rate``, ``lam``, ``merge_seed``, as the operator takes them).
        members: the number of members merged.

    Returns:
        The operator and the parameters it takes; the input when no identity applies.
    """
    params = dict(parameters)
    if method in ("dare_linear", "dare_ties") and params.get("drop_rate") == 0.0:
        if method == "dare_linear":
            method, params = "task_arithmetic", {"lam": params["lam"]}
        else:
            method, params = "ties", {"density": 1.0, "lam": params["lam"]}
    if members == 1 and method == "dare_ties":
        method = "dare_linear"
    if members == 1 and method == "ties" and params.get("density") == 1.0:
        method, params = "task_arithmetic", {"lam": params["lam"]}
    if method == "task_arithmetic" and params.get("lam") == 1.0:
        method, params = "average", {}
    return method, params
