"""Which conflict measure predicts accuracy on the user's adapters, with the numbers to show it.

For each measure (``spaces.measures``) over the evaluated mixtures: the plain Spearman
correlation with accuracy, the partial Spearman within each number of members (what the gate
decides on, ``spaces.gate_evidence``), a 95% interval of the latter, and the gate's decision as if
that measure were the gate's. :func:`choose_measure` picks the one the gate filters with: of
the measures whose decision is ``filter`` (negative and significant within size), the most
negative; none when no measure shows evidence. Only arrays in and numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from spaces.gate_evidence import DEFAULT_ALPHA, DEFAULT_MIN_N, DEFAULT_TOLERANCE, FsdEvidence, fsd_gate_evidence

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class MeasureEvidence:
    """One measure's correlations with accuracy over the evaluated mixtures, and the gate's
    decision on it (``gate``: as :func:`~spaces.gate_evidence.fsd_gate_evidence` returns it)."""

    measure: str
    spearman: float
    spearman_p: float
    partial: float
    partial_p: float
    n: int
    low: float  # 95% interval of ``partial``
    high: float
    gate: FsdEvidence

    def numbers(self) -> str:
        """``partial Spearman -0.45 [-0.60, -0.27], p < 0.001, n 40``."""
        if math.isnan(self.partial):
            return f"partial Spearman not defined (n {self.n})"
        return (f"partial Spearman {self.partial:+.2f} [{self.low:+.2f}, {self.high:+.2f}], "
                f"p {format_p(self.partial_p)}, n {self.n}")


def format_p(p: float) -> str:
    if math.isnan(p):
        return "-"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def spearman_interval(rho: float, df: int) -> tuple[float, float]:
    """95% interval of a Spearman coefficient by Fisher's z with the Fieller-Hartley-Pearson
    variance ``1.06 / (m - 3)``, ``m = df + 2`` the effective number of pairs (``df`` as in
    :func:`~spaces.gate_evidence.partial_spearman`); (nan, nan) when undefined."""
    m = df + 2
    if math.isnan(rho) or m <= 3:
        return math.nan, math.nan
    if abs(rho) >= 1.0:
        return rho, rho
    z, se = math.atanh(rho), math.sqrt(1.06 / (m - 3))
    return math.tanh(z - Z95 * se), math.tanh(z + Z95 * se)


def measure_evidence(measure: str, values: Sequence[float], k: Sequence[int], accuracy: Sequence[float], *,
                     tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA,
                     min_n: int = DEFAULT_MIN_N) -> MeasureEvidence:
    """One measure's :class:`MeasureEvidence` over the mixtures (one value, size and accuracy each)."""
    from scipy.stats import spearmanr  # scipy.stats: 0.8 s to import, only when a table is computed

    gate = fsd_gate_evidence(values, k, accuracy, alpha=alpha, min_n=min_n, tolerance=tolerance)
    x, y = np.asarray(values, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        plain = spearmanr(x, y)
        rho, p = float(plain.statistic), float(plain.pvalue)
    else:
        rho, p = math.nan, math.nan
    df = len(x) - 1 - max(len(np.unique(np.asarray(k))), 1)
    low, high = spearman_interval(gate.rho, df)
    return MeasureEvidence(measure, rho, p, gate.rho, gate.p_value, len(x), low, high, gate)


def rank_measures(evidence: Sequence[MeasureEvidence]) -> list[MeasureEvidence]:
    """Best first: measures the gate would filter with, then by partial Spearman, most negative
    first (a measure whose coefficient is undefined last)."""
    return sorted(evidence, key=lambda e: (e.gate.decision != "filter",
                                           math.inf if math.isnan(e.partial) else e.partial, e.measure))


def choose_measure(evidence: Sequence[MeasureEvidence]) -> tuple[MeasureEvidence | None, str]:
    """The measure the gate filters with (None: none shows evidence), and one sentence why."""
    if not evidence:
        return None, "No conflict measure is tracked: nothing is filtered"
    ranked = rank_measures(evidence)
    best = ranked[0]
    names = ", ".join(e.measure for e in ranked)
    if best.gate.decision == "filter":
        return best, (f"{best.measure} predicts accuracy here ({best.numbers()}), the strongest of {names}: "
                      f"proposals with {best.measure} above {best.gate.threshold:.4g} are filtered")
    if best.gate.decision == "too_few":
        return None, f"Too few mixtures evaluated to tell whether a measure predicts accuracy (n {best.n}): nothing is filtered"
    return None, (f"No measure predicts accuracy on these adapters (strongest: {best.measure}, {best.numbers()}; "
                  f"tracked: {names}): nothing is filtered")


def evidence_table(values: Mapping[str, Sequence[float]], k: Sequence[int], accuracy: Sequence[float], *,
                   tolerance: float = DEFAULT_TOLERANCE, min_n: int = DEFAULT_MIN_N) -> list[MeasureEvidence]:
    """:func:`measure_evidence` of every measure in ``values`` (measure -> one value per mixture), best first."""
    return rank_measures([measure_evidence(name, v, k, accuracy, tolerance=tolerance, min_n=min_n)
                          for name, v in values.items()])
