"""The gate on another conflict measure than weight FSD, or on the one the evidence chooses.

``search.conflict_measure`` names the measure (``spaces/measures.py``); ``auto`` makes the
gate track every pairwise measure on the mixtures evaluated so far and filter with the one
whose evidence is strongest (negative and significant within size, the rule of
``spaces.gate_evidence``; :func:`spaces.measure_ranking.choose_measure`), and with none while no
measure shows evidence. ``search.max_fsd`` keeps its meaning: ``auto`` (evidence decides),
a fixed threshold on the measure, or ``null``. The search's run gets the chosen measure as the
tag ``signmix.gate_measure`` and every tracked measure's partial Spearman, p and n as metrics
(``gate_rho/<measure>``, ``gate_p/<measure>``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Mapping, Sequence

from search.proposals.fsd_gate import FsdGate
from search.tracking.experiment_runs import open_existing_experiment
from search.tracking.layout import GATE_MEASURE_TAG as MEASURE_TAG
from search.tracking.layout import KIND_TAG, STATUS_TAG, spec_from_run
from spaces.measure_ranking import MeasureEvidence, choose_measure, evidence_table
from spaces.measures import WEIGHT_FSD, PairwiseMeasure
from spaces.space import Verdict

if TYPE_CHECKING:
    from spaces.fsd import SignIndex

logger = logging.getLogger(__name__)

class MeasureGate(FsdGate):
    """:class:`~search.gate.FsdGate` over one or several conflict measures.

    Args:
        measures: the pairwise measures tracked, by name; ``weight_fsd`` is read from the
            searcher's sign index in the space's ``fsd_measure`` (as the plain gate does), so
            its matrix here is used only for ordering.
        candidates: the measures the gate may filter with (several: ``auto``).
        mode, space, tolerance, fixed_threshold: as :class:`~search.gate.FsdGate`.
    """

    label = "conflict gate"

    def __init__(self, *, measures: Mapping[str, PairwiseMeasure], candidates: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = [c for c in candidates if c != WEIGHT_FSD and c not in measures]
        if unknown or not candidates:
            raise ValueError(f"candidates {unknown or '(none)'} have no measure; the measures are {sorted(measures)}")
        self.measures, self.candidates = dict(measures), list(candidates)
        self.values: dict[str, dict[str, float]] = {}  # mixture key -> measure -> its subset value
        self.table: list[MeasureEvidence] = []
        # The measure checked now: the only candidate, or (auto) the evidence's choice; None: none yet.
        self.chosen: str | None = self.candidates[0] if len(self.candidates) == 1 else None

    def value(self, name: str, members: Sequence[str], index: SignIndex | None = None) -> float:
        if name == WEIGHT_FSD and index is not None:
            return index.subset_fsd(members, self.measure)
        return self.measures[name].subset(members)

    def check(self, verdict: Verdict, members: Sequence[str] = ()) -> Verdict:
        """The space's verdict, rejected too when the chosen measure of ``members`` is over :attr:`threshold`."""
    
        limit = self.threshold
        if not verdict.accepted or limit is None or self.chosen is None:
            return verdict
        value = verdict.fsd if self.chosen == WEIGHT_FSD else self.value(self.chosen, members)
        if value <= limit:
            return verdict
        why = "fixed max_fsd" if self.mode == "fixed" else "the gate's fitted threshold"
        return Verdict(False, verdict.fsd, f"{self.chosen} {value:.4f} > {limit:.4f} ({why})",
                       violation=value - limit)

    def observe(self, key: str, members: Sequence[str], accuracy: float, index: SignIndex) -> None:
        self.values[key] = {name: self.value(name, members, index) for name in self.candidates}
        self.record(key, self.values[key][self.chosen or self.candidates[0]], len(members), accuracy)

    def refresh(self):
        """Every candidate's evidence over the evaluated mixtures; the chosen one decides."""
        self._refreshed_at = len(self.points)
        keys = [key for key in self.points if key in self.values]
        k = [self.points[key][1] for key in keys]
        acc = [self.points[key][2] for key in keys]
        values = {name: [self.values[key][name] for key in keys] for name in self.candidates}
        self.table = evidence_table(values, k, acc, tolerance=self.tolerance, min_n=self.min_n)
        best, reason = choose_measure(self.table)
        previous = self.decision
        if len(self.candidates) > 1:
            self.chosen = best.measure if best is not None else None
        shown = best or next(e for e in self.table if e.measure == (self.chosen or self.table[0].measure))
        if len(self.candidates) == 1:
            reason = f"{self.chosen}: {shown.gate.reason}"
        evidence = dataclasses.replace(shown.gate, reason=reason)
        if self.chosen is not None:  # the points' first column follows the chosen measure
            self.points = {key: (self.values[key][self.chosen], kk, a) if key in self.values else (f, kk, a)
                           for key, (f, kk, a) in self.points.items()}
        return self.settle(evidence, previous, why=f"; {evidence.reason}")

    def checked_measure(self) -> str:
        return str(self.chosen)

    def mlflow_metrics(self) -> dict[str, float]:
        metrics = super().mlflow_metrics()
        for e in self.table:
            metrics.update({f"gate_rho/{e.measure}": e.partial, f"gate_p/{e.measure}": e.partial_p,
                            f"gate_spearman/{e.measure}": e.spearman})
        return metrics

    def mlflow_tags(self) -> dict[str, str]:
        return {MEASURE_TAG: self.chosen or "none"}

    def get_state(self) -> dict:
        return {**super().get_state(), "values": dict(self.values)}

    def set_state(self, state: Mapping) -> None:
        self.values = dict(state.get("values", {}))
        super().set_state(state)


def warm_start_order(measures: Mapping[str, PairwiseMeasure], evidence: Sequence[MeasureEvidence],
                     search) -> tuple[PairwiseMeasure | None, str]:
    """The measure whose row means order the greedy warm start, and why: the configured one
    (``search``: the config's search section), or under ``auto`` the one the evidence so far
    (earlier searches of the experiment) chooses; None (weight FSD, as always) when there is none."""
    if not search.gate_chooses_measure:
        measure = search.conflict_measure
        return measures.get(measure), f"the warm start orders by {measure}"
    best, _ = choose_measure(evidence)
    if best is None:
        return None, "the warm start orders by weight_fsd (no measure has shown evidence yet)"
    return measures.get(best.measure), (f"the warm start orders by {best.measure}, the measure the experiment's "
                                        f"earlier mixtures chose ({best.numbers()})")


def experiment_evidence(cfg, measures: Mapping[str, PairwiseMeasure], tolerance: float,
                        extra: Mapping[str, Mapping[str, float]] | None = None) -> list[MeasureEvidence]:
    """Every measure's evidence over the experiment's evaluated mixtures that serve exactly
    ``search.targets`` (``extra``: measure -> mixture key -> value, e.g. ``merge_gap``), best
    first; empty when there is none. Reads only."""
    points = experiment_points(cfg)
    values = {name: [m.subset(members) for members, _, _, _ in points] for name, m in measures.items()}
    for name, by_key in (extra or {}).items():
        values[name] = [by_key[key] for _, key, _, _ in points]
    if not points:
        return []
    k = [len(members) for members, _, _, _ in points]
    return evidence_table(values, k, [acc for _, _, acc, _ in points], tolerance=tolerance)


def experiment_points(cfg) -> list[tuple[tuple[str, ...], str, float, object]]:
    """(members, mixture key, mean validation accuracy, MixtureSpec) of each distinct evaluated
    mixture of the experiment whose targets are exactly ``search.targets``. Reads only."""

    client, experiment_id = open_existing_experiment(cfg)
    if experiment_id is None:
        return []
    runs = client.search_runs([experiment_id], max_results=50000, order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`{KIND_TAG}` = 'mixture' and tags.`{STATUS_TAG}` = 'evaluated'")
    targets, seen, points = set(cfg.search.targets), set(), []
    for run in runs:
        if "accuracy_mean" not in run.data.metrics:
            continue
        spec = spec_from_run(run)
        if set(spec.targets) == targets and spec.key not in seen:
            seen.add(spec.key)
            points.append((tuple(spec.members), spec.key, run.data.metrics["accuracy_mean"], spec))
    return points
