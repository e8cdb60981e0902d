"""The one rule that says what became of a mixture trial.

Both the searcher (what the strategy is told, what counts against the budget) and the
MLflow callback (the child run's ``signmix.status``) ask :func:`trial_outcome`, so they can
never disagree about a trial.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence, Union

METRIC = "accuracy_mean"  # what Ray Tune ranks trials by; the first objective
OUTCOMES = ("evaluated", "filtered", "stopped_early", "failed")
Outcome = Literal[OUTCOMES]
Value = Union[float, list, None]  # one objective: a float; several: a list in objective order


def objective_value(metrics: Mapping[str, float] | None, objectives: Sequence[str] = (METRIC,)) -> Value:
    """What the strategy is told for ``metrics``: the value of the one objective, the list of
    several, or None when one of them is missing."""
    if not metrics:
        return None
    values = [metrics.get(m) for m in objectives]
    if any(v is None for v in values):
        return None
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def trial_outcome(result: Mapping | None, *, error: bool = False,
                  objectives: Sequence[str] = (METRIC,)) -> tuple[Outcome, Value]:
    """``(outcome, value)`` of a finished trial from its last result.

    ``failed``: the trial raised (or, in a batch, the mixture did: ``mixture_error``), or did
    not report every objective. ``stopped_early``: it
    reported only part of its evaluation (``evaluated_fraction`` < 1, ASHA stopped it).
    ``evaluated``: everything else; a trial that reports no ``evaluated_fraction`` evaluated
    in one piece.
    """
    value = None if error or (result or {}).get("mixture_error") else objective_value(result, objectives)
    if value is None:
        return "failed", None
    if float(result.get("evaluated_fraction", 1.0)) < 1.0:
        return "stopped_early", value
    return "evaluated", value
