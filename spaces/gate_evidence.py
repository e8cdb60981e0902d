"""Whether FSD predicts accuracy on the user's own adapters, and the gate that follows from it.

Mixtures with more members tend to have both a higher FSD and a different accuracy, so a
raw correlation of FSD with accuracy mostly measures the number of members. The evidence
here is the *partial* Spearman correlation of FSD with accuracy controlling for the
number of members (within mixtures of equal size, whatever the shape of the size effect),
computed over the mixtures a search has evaluated so far. The
pre-filter (``max_fsd: auto``) filters only when that evidence says higher FSD goes with
lower accuracy, and then with a threshold that keeps every near-best mixture seen.

Only arrays in and numbers out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import numpy as np

GateDecision = Literal["filter", "no_signal", "too_few"]

ArrayLike = Union[Sequence[float], np.ndarray]

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_N = 8
DEFAULT_TOLERANCE = 0.01  # one accuracy point: "as good as the best" for the threshold rule


@dataclass(frozen=True)
class FsdEvidence:
    """What the evaluated mixtures say about FSD, and what the gate does about it.

    ``rho`` and ``p_value`` are the partial Spearman correlation of FSD with accuracy given
    the number of members (plain Spearman when every mixture has the same number) and its
    two-sided p-value; both are NaN when they cannot be computed (too few mixtures, or FSD
    or accuracy constant once the number of members is accounted for). ``threshold`` is the
    fitted FSD limit when ``decision == "filter"``, else None. ``reason`` is one sentence
    for the search summary.
    """

    rho: float
    p_value: float
    n: int
    decision: GateDecision
    threshold: float | None
    reason: str


def _as_finite(values: ArrayLike, name: str) -> np.ndarray:
    """Returns ``values`` as a 1-D float64 array, or raises a ValueError naming the first bad entry."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {err}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] is {arr[i].item()}; every evaluated mixture needs a finite {name}")
    return arr


def _residuals(y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Returns ``y`` minus its mean within each group (minus its overall mean when groups is None):
    the least-squares residual of ``y`` on one indicator per group."""
    if groups is None:
        return y - y.mean()
    _, which = np.unique(groups, return_inverse=True)
    means = np.bincount(which, weights=y) / np.bincount(which)
    return y - means[which]


def partial_spearman(x: ArrayLike, y: ArrayLike, control: ArrayLike) -> tuple[float, float]:
    """Returns the Spearman correlation of ``x`` and ``y`` within groups of equal ``control``, and its p-value.

    ``x`` and ``y`` are rank-transformed (ties get their average rank); each rank is
    residualised on one indicator per distinct ``control`` value (its mean rank within
    that group is subtracted), and ``rho`` is the Pearson correlation of the residuals: the
    pooled within-group rank correlation. So the control can act in any shape (accuracy
    that peaks at 3 members, FSD that saturates), which a linear fit on the rank of
    ``control`` would leave behind as a spurious correlation. The two-sided p-value comes
    from ``t = rho * sqrt(df / (1 - rho**2))`` with ``df = n - 1 - G``, G the number of
    distinct ``control`` values (a group of one contributes nothing but costs a degree of
    freedom). With one group this is plain Spearman, ``df = n - 2``.

    Returns:
        ``(rho, p_value)``; ``(nan, nan)`` when ``df < 1`` or either residual is constant
        (the variable does not vary within any group).
    """
    from scipy.stats import rankdata
    from scipy.stats import t as t_dist

    xs, ys, cs = _as_finite(x, "x"), _as_finite(y, "y"), _as_finite(control, "control")
    _check_lengths({"x": xs, "y": ys, "control": cs})
    n = len(xs)
    groups = len(np.unique(cs))
    df = n - 1 - max(groups, 1)
    if df < 1:
        return math.nan, math.nan
    residuals = []
    for values in (xs, ys):
        ranks = rankdata(values)
        res = _residuals(ranks, cs if groups > 1 else None)
        # Residuals at rounding level: the variable is constant, or a function of the control.
        if float(res @ res) <= 1e-10 * max(float(((ranks - ranks.mean()) ** 2).sum()), 1.0):
            return math.nan, math.nan
        residuals.append(res)
    rx, ry = residuals
    rho = max(-1.0, min(1.0, float(rx @ ry) / math.sqrt(float(rx @ rx) * float(ry @ ry))))
    if abs(rho) == 1.0:
        return rho, 0.0
    t_stat = rho * math.sqrt(df / (1.0 - rho * rho))
    return rho, float(2.0 * t_dist.sf(abs(t_stat), df))


def _check_lengths(arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise ValueError(f"one value per evaluated mixture is needed in each array, but {listed}")


def _fmt_p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def fsd_gate_evidence(fsd: ArrayLike, k: ArrayLike, accuracy: ArrayLike, *, alpha: float = DEFAULT_ALPHA,
                      min_n: int = DEFAULT_MIN_N, tolerance: float = DEFAULT_TOLERANCE) -> FsdEvidence:
    """Returns whether FSD predicts accuracy over the evaluated mixtures, and the gate's decision.

    The decision is one of :data:`GateDecision`:

    - ``"too_few"``: fewer than ``min_n`` mixtures evaluated; nothing is filtered.
    - ``"no_signal"``: unless the partial Spearman ``rho`` (FSD vs accuracy, given the
      number of members) is negative *and* its p-value is below ``alpha``. A positive
      or insignificant correlation never filters.
    - ``"filter"``: higher FSD goes with lower accuracy here. The threshold is the largest
      FSD among the evaluated mixtures whose accuracy is within ``tolerance`` of the
      best accuracy seen; proposals with FSD strictly above it are filtered.

    Why that threshold: a gate that rejected a mixture as good as the best one seen would
    be wrong on data it has already looked at, and the evidence only says FSD predicts
    accuracy on average, not that the best mixtures have the lowest FSD. Taking the
    largest FSD of every near-best mixture (never less than the best one's own FSD) means
    each of them, if proposed again, passes; only proposals less compatible than every
    good mixture seen are rejected. Pass the validation interval's half-width as
    ``tolerance`` to treat every mixture the data cannot tell from the best as near-best.

    Args:
        fsd: each evaluated mixture's FSD (the search's measure, e.g. mean pairwise).
        k: each mixture's number of members (integers >= 1).
        accuracy: each mixture's validation accuracy.
        alpha: significance level, in (0, 1).
        min_n: fewest mixtures to decide on, >= 4 (the correlation needs n - 1 - sizes >= 1).
        tolerance: how far below the best accuracy still counts as near-best, >= 0.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    if isinstance(min_n, bool) or not isinstance(min_n, (int, np.integer)) or min_n < 4:
        raise ValueError(f"min_n must be an integer >= 4, got {min_n!r}")
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance) or tolerance < 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    fsds, ks, accs = _as_finite(fsd, "fsd"), _as_finite(k, "k"), _as_finite(accuracy, "accuracy")
    _check_lengths({"fsd": fsds, "k": ks, "accuracy": accs})
    bad_k = np.flatnonzero((ks < 1) | (ks != np.round(ks)))
    if bad_k.size:
        i = int(bad_k[0])
        raise ValueError(f"k[{i}] is {ks[i].item()}; k is a number of members, an integer >= 1")

    n = len(fsds)
    rho, p_value = partial_spearman(fsds, accs, ks)
    if n < min_n:
        return FsdEvidence(rho, p_value, n, "too_few", None,
                           f"Too few mixtures evaluated to tell whether FSD predicts accuracy "
                           f"(n {n}, need {min_n}): nothing is filtered")
    controlled = not bool(np.all(ks == ks[0]))
    stat = "partial Spearman" if controlled else "Spearman"
    if math.isnan(rho):
        given = " once the number of members is accounted for" if controlled else ""
        return FsdEvidence(rho, p_value, n, "no_signal", None,
                           f"FSD or accuracy does not vary{given} on these adapters (n {n}): "
                           f"nothing is filtered")
    numbers = f"{stat} {rho:+.2f}, p {_fmt_p(p_value)}, n {n}"
    if rho > 0 and p_value < alpha:
        return FsdEvidence(rho, p_value, n, "no_signal", None,
                           f"Higher FSD goes with higher accuracy on these adapters ({numbers}): "
                           f"nothing is filtered")
    if not (rho < 0 and p_value < alpha):
        return FsdEvidence(rho, p_value, n, "no_signal", None,
                           f"FSD does not predict accuracy on these adapters ({numbers}): nothing is filtered")
    near_best = accs >= accs.max() - tolerance - 1e-12  # inclusive, whatever the float rounding
    threshold = float(fsds[near_best].max())
    return FsdEvidence(rho, p_value, n, "filter", threshold,
                       f"FSD predicts accuracy here ({numbers}): proposals with FSD above "
                       f"{threshold:.4g} are filtered")
