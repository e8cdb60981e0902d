"""How far an accuracy can be trusted: paired bootstrap intervals and McNemar's exact test.

Every candidate (the chosen mixture, each target's own adapter, the uniform soup, greedy's
pick) is evaluated on the *same* examples, so each function here takes per-example
correctness vectors (``True`` where the candidate got the example right) and compares
them example by example. The bootstrap draws one set of resampled example indices and
applies it to every candidate, so intervals and differences are paired: two identical
candidates always get identical intervals, and a candidate's lead over itself is exactly 0.

Only numbers in and numbers out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

Correctness = Union[Sequence[bool], np.ndarray]

DEFAULT_RESAMPLES = 2000
# Resampled indices are drawn this many values at a time (8 MiB of int64), so memory stays
# flat whatever the number of examples. The chunk depends only on the number of examples,
# so a candidate's interval depends only on (seed, n_resamples, its own correctness).
_CHUNK_VALUES = 2**20


@dataclass(frozen=True)
class Interval:
    """An observed accuracy and its bootstrap confidence interval over ``n`` examples."""

    accuracy: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width (the "±" of a summary table)."""
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval (bounds included)."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Difference:
    """The observed accuracy lead of ``a`` over ``b`` (``a - b``) and its paired bootstrap interval."""

    lead: float
    low: float
    high: float
    n: int

    @property
    def includes_zero(self) -> bool:
        """True when the interval holds 0: the data cannot tell ``a`` and ``b`` apart."""
        return self.low <= 0.0 <= self.high


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired correctness.

    ``b01``: examples ``a`` got wrong and ``b`` got right; ``b10``: ``a`` right, ``b`` wrong.
    ``p_value``: two-sided exact (binomial) p-value; 1.0 when there is no discordant pair.
    """

    b01: int
    b10: int
    p_value: float

    @property
    def n_discordant(self) -> int:
        """The number of examples on which exactly one of the two candidates is right."""
        return self.b01 + self.b10


def _as_correctness(values: Correctness, name: str) -> np.ndarray:
    """Returns ``values`` as a 1-D bool array, or raises a ValueError naming ``name``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-example correctness, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; evaluate on at least one example")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold True/False (or 0/1), got dtype {arr.dtype}")
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must hold only True/False (or 0/1), got {arr[i].item()!r} at position {i}")
    return arr.astype(bool)


def _check_same_examples(columns: Mapping[str, np.ndarray]) -> int:
    """Returns the shared number of examples, or raises when the candidates' lengths differ."""
    lengths = {name: len(col) for name, col in columns.items()}
    first = next(iter(lengths))
    for name, length in lengths.items():
        if length != lengths[first]:
            raise ValueError(f"every candidate must be evaluated on the same examples: {first!r} has "
                             f"{lengths[first]} but {name!r} has {length}")
    return lengths[first]


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")


def _check_resampling(n_resamples: int, seed: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _resampled_sums(columns: Sequence[np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """Returns [n_resamples, len(columns)] sums of each column over shared resampled indices."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_VALUES // n)
    sums = np.empty((n_resamples, len(columns)), dtype=np.int64)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))  # one draw, applied to every candidate: paired
        for j, col in enumerate(columns):
            sums[start:start + rows, j] = col[idx].sum(axis=1, dtype=np.int64)
    return sums


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(correct: Mapping[str, Correctness], *, n_resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Returns each candidate's accuracy with a paired percentile bootstrap interval.

    One set of ``n_resamples`` resamples of the example indices is drawn and applied to
    every candidate, so the intervals are comparable (and identical for identical
    candidates). Each interval is widened, if needed, to include the observed accuracy:
    a percentile interval can miss it by one resample's step when ``n_resamples`` is small,
    and a summary that prints ``0.80 [0.81, 0.90]`` would be wrong to read.

    Args:
        correct: candidate name -> per-example correctness (bools or 0/1), all the same length.
        n_resamples: bootstrap resamples (2000 gives percentiles stable to about 0.5 points).
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the resampling; the same seed gives the same intervals.

    Returns:
        Candidate name -> :class:`Interval`, in the order of ``correct``.
    """
    _check_confidence(confidence)
    _check_resampling(n_resamples, seed)
    if not correct:
        raise ValueError("correct is empty; give at least one candidate's per-example correctness")
    columns = {name: _as_correctness(values, f"correct[{name!r}]") for name, values in correct.items()}
    n = _check_same_examples(columns)
    sums = _resampled_sums(list(columns.values()), n_resamples, seed)
    intervals = {}
    for j, (name, col) in enumerate(columns.items()):
        accuracy = float(col.mean())
        low, high = _percentiles(sums[:, j] / n, confidence)
        intervals[name] = Interval(accuracy=accuracy, low=min(low, accuracy), high=max(high, accuracy), n=n)
    return intervals


def paired_difference(a: Correctness, b: Correctness, *, n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = 0.95, seed: int = 0) -> Difference:
    """Returns the accuracy lead of ``a`` over ``b`` with a paired percentile bootstrap interval.

    The lead is recomputed on each resample of the shared examples (the same resamples as
    :func:`paired_bootstrap` with the same seed and number of examples), so examples both
    candidates get right or wrong add no noise. When :attr:`Difference.includes_zero`, the
    lead is within the noise of this evaluation set. The interval always includes the
    observed lead, and is exactly ``[0, 0]`` when ``a`` and ``b`` agree on every example.

    Args:
        a: per-example correctness of one candidate.
        b: per-example correctness of the other, on the same examples.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the resampling.
    """
    _check_confidence(confidence)
    _check_resampling(n_resamples, seed)
    columns = {"a": _as_correctness(a, "a"), "b": _as_correctness(b, "b")}
    n = _check_same_examples(columns)
    sums = _resampled_sums([columns["a"], columns["b"]], n_resamples, seed)
    # Integer sums first, one division: the lead depends only on the discordant examples,
    # and identical candidates give exactly 0.0 on every resample.
    lead = float((int(columns["a"].sum()) - int(columns["b"].sum())) / n)
    low, high = _percentiles((sums[:, 0] - sums[:, 1]) / n, confidence)
    return Difference(lead=lead, low=min(low, lead), high=max(high, lead), n=n)


def mean_difference(a: Mapping[str, Correctness], b: Mapping[str, Correctness], *,
                    n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> Difference:
    """The lead of ``a`` over ``b`` in accuracy averaged over targets (what a search ranks by,
    ``accuracy_mean``), with a paired bootstrap interval stratified by target.

    Each target's examples are resampled on their own (seed ``seed + i`` for the i-th target
    in sorted order), both candidates on the same draws; the lead of a resample is the mean
    of the targets' leads. Pooling the examples instead would weigh a target by its size.
    With one target this is :func:`paired_difference`.

    Args:
        a: target -> per-example correctness of one candidate.
        b: target -> per-example correctness of the other, on the same examples.
    """
    if sorted(a) != sorted(b) or not a:
        raise ValueError(f"a and b must name the same targets, got {sorted(a)} and {sorted(b)}")
    targets = sorted(a)
    if len(targets) == 1:
        return paired_difference(a[targets[0]], b[targets[0]], n_resamples=n_resamples, confidence=confidence,
                                 seed=seed)
    _check_confidence(confidence)
    _check_resampling(n_resamples, seed)
    leads, resampled, total = [], np.zeros(n_resamples), 0
    for i, t in enumerate(targets):
        columns = {"a": _as_correctness(a[t], f"a[{t!r}]"), "b": _as_correctness(b[t], f"b[{t!r}]")}
        n = _check_same_examples(columns)
        sums = _resampled_sums([columns["a"], columns["b"]], n_resamples, seed + i)
        leads.append((int(columns["a"].sum()) - int(columns["b"].sum())) / n)
        resampled += (sums[:, 0] - sums[:, 1]) / n
        total += n
    lead = float(sum(leads) / len(targets))
    low, high = _percentiles(resampled / len(targets), confidence)
    return Difference(lead=lead, low=min(low, lead), high=max(high, lead), n=total)


def mcnemar_exact(a_correct: Correctness, b_correct: Correctness) -> McNemar:
    """Returns McNemar's two-sided exact test of two candidates evaluated on the same examples.

    Only discordant examples (one candidate right, the other wrong) carry information.
    Under the null hypothesis that both candidates are equally accurate, ``b01`` is
    Binomial(``b01 + b10``, 0.5), and the two-sided p-value is
    ``min(1, 2 * P(X <= min(b01, b10)))``; with no discordant example it is 1.

    Args:
        a_correct: per-example correctness of ``a`` (e.g. the chosen mixture).
        b_correct: per-example correctness of ``b`` (e.g. the target's own adapter).
    """
    from scipy.stats import binom

    columns = {"a_correct": _as_correctness(a_correct, "a_correct"),
               "b_correct": _as_correctness(b_correct, "b_correct")}
    _check_same_examples(columns)
    a, b = columns["a_correct"], columns["b_correct"]
    b01 = int(np.count_nonzero(~a & b))
    b10 = int(np.count_nonzero(a & ~b))
    discordant = b01 + b10
    if discordant == 0:
        return McNemar(b01=0, b10=0, p_value=1.0)
    p_value = min(1.0, 2.0 * float(binom.cdf(min(b01, b10), discordant, 0.5)))
    return McNemar(b01=b01, b10=b10, p_value=p_value)


def examples_for(half_width: float, accuracy: float = 0.5, confidence: float = 0.95) -> int:
    """Returns the fewest examples ``n`` with ``half_width_for(n, accuracy, confidence) <= half_width``.

    The inverse of :func:`half_width_for`: ``ceil(z**2 * accuracy * (1 - accuracy) / half_width**2)``.

    Args:
        half_width: the interval half-width wanted, > 0.
        accuracy: the expected accuracy, in [0, 1].
        confidence: the interval's coverage, in (0, 1).
    """
    if isinstance(half_width, bool) or not isinstance(half_width, (int, float)) or not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width!r}")
    width_at_1 = half_width_for(1, accuracy, confidence)  # z * sqrt(p (1 - p)), validated there
    n = max(1, math.ceil((width_at_1 / half_width) ** 2))
    while n > 1 and half_width_for(n - 1, accuracy, confidence) <= half_width:  # float rounding, either way
        n -= 1
    while half_width_for(n, accuracy, confidence) > half_width:
        n += 1
    return n


def half_width_for(n: int, accuracy: float = 0.5, confidence: float = 0.95) -> float:
    """Returns the normal-approximation half-width of an accuracy interval over ``n`` examples.

    ``z * sqrt(accuracy * (1 - accuracy) / n)`` with ``z`` the two-sided normal quantile of
    ``confidence``: 100 examples at accuracy 0.8 give about ±0.078. The default accuracy
    0.5 gives the widest interval, the safe number to warn with before a search starts.

    Args:
        n: number of evaluation examples, >= 1.
        accuracy: the expected accuracy, in [0, 1].
        confidence: the interval's coverage, in (0, 1).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (the number of evaluation examples), got {n!r}")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy!r}")
    _check_confidence(confidence)
    # The standard library's normal quantile: every search's start asks for this, and
    # importing scipy.stats for it cost 0.8 s there.
    z = statistics.NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2)
    return z * math.sqrt(accuracy * (1.0 - accuracy) / n)
