"""The FSD gate of a search: filter on FSD only when the user's own adapters show it predicts accuracy.

``search.max_fsd`` sets its mode:

- ``auto``: nothing is filtered until the search has evaluated enough mixtures of every
  size (``GATE_PER_SIZE`` each, or all there are) and at least ``spaces.gate_evidence``'s
  ``min_n``; then :func:`spaces.gate_evidence.fsd_gate_evidence` decides over every evaluated
  mixture (partial Spearman of FSD with accuracy given the number of members), and is
  refreshed as each new evaluation arrives. Only a ``filter`` decision sets a threshold,
  fitted so that every mixture the validation data cannot tell from the best passes.
- a number: a fixed threshold, whatever the evidence (still measured and reported);
- ``null``: no FSD limit (evidence still measured and reported).

The gate is state of the searcher: :meth:`FsdGate.get_state` travels in its snapshot, so a
resumed search keeps the evidence it had.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from math import comb
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from search.tracking.experiment_runs import mixture_runs, open_existing_experiment
from search.tracking.layout import GATE_DECISION_TAG, GATE_REASON_TAG
from search.proposals.validation_size import small_validation_warnings, validation_sizes
from spaces.gate_evidence import DEFAULT_MIN_N, FsdEvidence, fsd_gate_evidence
from spaces.space import Verdict
from trainables.significance import half_width_for

if TYPE_CHECKING:
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace

logger = logging.getLogger(__name__)

GATE_PER_SIZE = 2  # evaluated mixtures of each size before ``auto`` may filter
GateMode = Literal["auto", "fixed", "off"]
DECISION_TAG, REASON_TAG = GATE_DECISION_TAG, GATE_REASON_TAG


# The gate refreshes its evidence after every evaluated mixture up to this many, then after
# every 1% more (FsdGate.record); the search's end refreshes it once more over all of them.
REFRESH_EACH_UNTIL = 500


class FsdGate:
    """The search's FSD threshold and the evidence behind it.

    Args:
        mode: ``auto`` (evidence decides), ``fixed`` (``fixed_threshold``) or ``off``.
        space: the searched space (its sizes, measure and targets); its own ``max_fsd``
            is not used for ``auto``.
        tolerance: accuracy gap still counted as near-best when fitting the threshold
            (the validation interval's half-width).
        fixed_threshold: the threshold of ``fixed``.
        per_size: evaluated mixtures of each size needed before ``auto`` filters.
        min_n: fewest evaluated mixtures for a decision.
    """

    label = "FSD gate"  # how summaries and logs name this gate

    def __init__(self, *, mode: GateMode, space: MixtureSpace, tolerance: float,
                 fixed_threshold: float | None = None, per_size: int = GATE_PER_SIZE,
                 min_n: int = DEFAULT_MIN_N) -> None:
        if mode not in ("auto", "fixed", "off"):
            raise ValueError(f"mode must be auto, fixed or off, got {mode!r}")
        if mode == "fixed" and fixed_threshold is None:
            raise ValueError("mode 'fixed' needs fixed_threshold")
        self.mode, self.tolerance, self.fixed_threshold = mode, float(tolerance), fixed_threshold
        self.per_size, self.min_n = per_size, min_n
        self.measure = space.fsd_measure
        self.sizes = possible_sizes(space)
        self.points: dict[str, tuple[float, int, float]] = {}  # mixture key -> (fsd, k, accuracy)
        self.requested: dict[int, int] = {}  # size -> mixtures asked of the strategy to cover it
        self.evidence: FsdEvidence | None = None
        self.awaiting_sizes = False  # a signal waits for sizes (refresh)
        self._refreshed_at = 0  # evaluated mixtures at the last refresh

    # What the searcher asks ------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        """The FSD above which a proposal is filtered now; None: nothing is filtered."""
        if self.mode == "fixed":
            return self.fixed_threshold
        if self.mode == "off" or self.evidence is None or self.evidence.decision != "filter":
            return None
        return self.evidence.threshold

    @property
    def decision(self) -> str:
        """``filter`` | ``no_signal`` | ``too_few`` under ``auto``; ``fixed`` or ``off`` otherwise."""
        if self.mode != "auto":
            return self.mode
        return self.evidence.decision if self.evidence is not None else "too_few"

    def check(self, verdict: Verdict, members: Sequence[str] = ()) -> Verdict:
        """The space's verdict, rejected too when its FSD is over :attr:`threshold` (``members``:
        the mixture's, for gates that measure conflict otherwise, ``search/proposals/measure_gate.py``)."""
        limit = self.threshold
        if not verdict.accepted or limit is None or verdict.fsd <= limit:
            return verdict
        why = "fixed max_fsd" if self.mode == "fixed" else "the FSD gate's fitted threshold"
        return Verdict(False, verdict.fsd, f"{self.measure} FSD {verdict.fsd:.4f} > {limit:.4f} ({why})",
                       violation=verdict.fsd - limit)

    def observe(self, key: str, members: Sequence[str], accuracy: float, index: SignIndex) -> None:
        """:meth:`record` one evaluated mixture, its FSD measured on ``index``."""
        self.record(key, index.subset_fsd(members, self.measure), len(members), accuracy)

    def mlflow_tags(self) -> dict[str, str]:
        """Tags beside ``signmix.fsd_gate`` and its reason on the search's run (none here)."""
        return {}

    def record(self, key: str, fsd: float, k: int, accuracy: float) -> None:
        """Add one evaluated mixture and refresh the evidence: after each of the first
        :data:`REFRESH_EACH_UNTIL`, then each time the mixtures grew by 1% (a refresh reads
        them all: refreshing after each of 10,000 would cost the search's driver O(n²))."""
        if not all(math.isfinite(v) for v in (fsd, accuracy)):
            return
        self.points[key] = (float(fsd), int(k), float(accuracy))
        n = len(self.points)
        if n <= REFRESH_EACH_UNTIL or n >= self._refreshed_at * 1.01:
            self.refresh()

    def missing_sizes(self) -> dict[int, int]:
        """Size -> how many more evaluated mixtures of that size ``auto`` waits for."""
        have: dict[int, int] = {}
        for _, k, _ in self.points.values():
            have[k] = have.get(k, 0) + 1
        return {size: need - have.get(size, 0) for size, available in self.sizes.items()
                if (need := min(self.per_size, available)) > have.get(size, 0)}

    def refresh(self) -> FsdEvidence:
        """Recompute the evidence over every evaluated mixture (and the decision under ``auto``)."""
        self._refreshed_at = len(self.points)
        fsd, k, acc = (list(col) for col in zip(*self.points.values())) if self.points else ([], [], [])
        evidence = fsd_gate_evidence(fsd, k, acc, min_n=self.min_n, tolerance=self.tolerance)
        return self.settle(evidence, self.decision)

    def settle(self, evidence: FsdEvidence, previous: str | None, *, why: str = "") -> FsdEvidence:
        """Keep ``evidence`` as the gate's, holding a decision to filter until every size has its
        mixtures; under ``auto``, log a decision that differs from ``previous``."""
        missing = self.missing_sizes()
        # A signal that the missing sizes must confirm before anything is filtered: the only
        # case in which the gate asks the strategy for mixtures (``exploration``).
        self.awaiting_sizes = evidence.decision == "filter" and bool(missing)
        if self.awaiting_sizes:
            sizes = ", ".join(f"{n} more of size {s}" for s, n in sorted(missing.items()))
            evidence = dataclasses.replace(
                evidence, decision="too_few", threshold=None,
                reason=f"Waiting for mixtures of every size before the gate decides ({sizes}; "
                       f"n {evidence.n} so far{why}): nothing is filtered yet")
        self.evidence = evidence
        if self.mode == "auto" and self.decision != previous:
            logger.info("%s: %s", self.label, evidence.reason)
        return evidence

    def summary(self) -> str:
        """One sentence for the search summary: the evidence and what the gate did with it."""
        ev = self.evidence or self.refresh()
        if self.mode == "auto":
            return ev.reason
        numbers = "not measured" if math.isnan(ev.rho) else f"rho {ev.rho:+.2f}, p {ev.p_value:.3g}, n {ev.n}"
        measure = self.checked_measure()
        if self.mode == "fixed":
            on = f" on {measure}" if measure != "FSD" else ""
            return f"Fixed max_fsd {self.fixed_threshold:.4g}{on}, whatever the evidence ({numbers})"
        name = self.label[0].upper() + self.label[1:]
        return f"{name} off (max_fsd: null): nothing is filtered ({measure}: {numbers})"

    def checked_measure(self) -> str:
        """The name of the measure the gate checks, as its summary gives it."""
        return "FSD"

    def mlflow_metrics(self) -> dict[str, float]:
        """``fsd_gate_rho``, ``fsd_gate_p``, ``fsd_gate_n`` and ``fsd_gate_threshold`` (NaN: none)."""
        ev = self.evidence or self.refresh()
        limit = self.threshold
        return {"fsd_gate_rho": ev.rho, "fsd_gate_p": ev.p_value, "fsd_gate_n": float(ev.n),
                "fsd_gate_threshold": float("nan") if limit is None else float(limit)}

    # Exploration: a few mixtures of every size -----------------------------------
    def exploration(self, space: MixtureSpace, seen: set[str], rng: random.Random) -> list[dict]:
        """Parameter dicts of unseen mixtures of the sizes ``auto`` still waits for, not yet
        asked; the searcher has the strategy propose them next.

        Only while the evidence, over what the strategy chose to evaluate, shows a signal that
        the missing sizes have to confirm before the gate filters. Otherwise exploring for the
        gate only takes evaluations from the strategy: on the real-data benchmark, exploring
        every size up front cost TPE 3.5 points of regret where FSD had no signal."""
        if self.mode != "auto" or not self.awaiting_sizes:
            return []
        asks = []
        for size, need in sorted(self.missing_sizes().items()):
            for _ in range(max(0, need - self.requested.get(size, 0))):
                params = params_of_size(space, size, seen, rng)
                if params is None:
                    break
                seen.add(space.to_mixture_spec(params).key)
                self.requested[size] = self.requested.get(size, 0) + 1
                asks.append(params)
        return asks

    # Resume -----------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"points": dict(self.points), "requested": dict(self.requested)}

    def set_state(self, state: Mapping) -> None:
        self.points = dict(state.get("points", {}))
        self.requested = dict(state.get("requested", {}))
        self.refresh()


def possible_sizes(space: MixtureSpace) -> dict[int, int]:
    """Number of members -> how many member sets of that size the space can propose."""
    free = len(space.free_domains)
    fixed = len(space.targets) if space.require_targets else 0
    cap = space.max_members or len(space.domains)
    sizes = {}
    for n in range(free + 1):
        size = fixed + n
        if 1 <= size <= cap:
            sizes[size] = comb(free, n)
    return sizes


def params_of_size(space: MixtureSpace, size: int, seen: set[str], rng: random.Random) -> dict | None:
    """An unseen parameter dict whose mixture has ``size`` members, unpruned (the space's
    first pruning choice); None when every member set of that size was seen."""
    free = list(space.free_domains)
    n = size - (len(space.targets) if space.require_targets else 0)
    if not 0 <= n <= len(free):
        return None
    for _ in range(200):
        params = space.params_for(rng.sample(free, n))
        if space.to_mixture_spec(params).key not in seen:
            return params
    return None


def gate_mode(max_fsd: object) -> tuple[GateMode, float | None]:
    """``search.max_fsd`` as a gate mode and its fixed threshold."""
    if max_fsd == "auto":
        return "auto", None
    if max_fsd is None:
        return "off", None
    return "fixed", float(max_fsd)


def make_gate(cfg, space: MixtureSpace, tolerance: float) -> FsdGate:
    """The gate of ``cfg.search.max_fsd`` over ``space``, with the validation half-width as tolerance."""
    mode, fixed = gate_mode(cfg.search.max_fsd)
    return FsdGate(mode=mode, space=space, tolerance=tolerance, fixed_threshold=fixed)


def validation_tolerance(cfg, progress=logger.warning) -> tuple[float, list[str]]:
    """The widest 95% half-width of the targets' validation accuracies (the gate's tolerance),
    and a warning per target whose half-width exceeds ``search.max_interval_half_width``
    (each also sent to ``progress`` before the search starts)."""

    sizes = validation_sizes(cfg)
    warnings = small_validation_warnings(sizes, cfg.search.max_interval_half_width)
    for line in warnings:
        progress(f"warning: {line}")
    return half_width_for(max(1, min(sizes.values()))), warnings


def log_gate(tracker, gate: FsdGate) -> None:
    """The gate's evidence on the search's parent run: metrics ``fsd_gate_rho``, ``fsd_gate_p``,
    ``fsd_gate_n``, ``fsd_gate_threshold``; tags ``signmix.fsd_gate`` (the decision) and
    ``signmix.fsd_gate_reason`` (the summary sentence)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    tracker.client.log_batch(tracker.parent_id, metrics=[Metric(k, float(v), ts, 0)
                                                         for k, v in gate.mlflow_metrics().items()])
    tracker.client.set_tag(tracker.parent_id, DECISION_TAG, gate.decision)
    tracker.client.set_tag(tracker.parent_id, REASON_TAG, gate.summary()[:5000])
    for tag, value in gate.mlflow_tags().items():
        tracker.client.set_tag(tracker.parent_id, tag, value)


def evidence_from_mlflow(cfg) -> FsdEvidence | None:
    """The gate's evidence over every evaluated mixture of the experiment that serves exactly
    ``search.targets`` (its logged ``fsd``: the measure of the search that ran it), with the
    validation half-width as tolerance: what ``signmix fsd`` prints. None when the experiment
    has no such mixture. Reads only."""

    client, experiment_id = open_existing_experiment(cfg)
    if experiment_id is None:
        return None
    targets = set(cfg.search.targets)
    points = [(r.metrics["fsd"], r.k, r.metrics["accuracy_mean"])
              for r in mixture_runs(client, experiment_id, status="evaluated")
              if set(r.targets) == targets and "fsd" in r.metrics and "accuracy_mean" in r.metrics]
    if not points:
        return None
    tolerance = half_width_for(max(1, min(validation_sizes(cfg).values())))
    fsd, k, acc = (list(col) for col in zip(*points))
    return fsd_gate_evidence(fsd, k, acc, tolerance=tolerance)
