"""The search's conflict gate, built: the measures it needs computed (probe passes on Ray, cached
in the store), then the gate over them (:mod:`search.proposals.measure_gate`).

The proposals layer decides with measures it is given; computing them runs trials, which is a
workflow's job, so the gate is built here and handed to the searcher.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from search.proposals.fsd_gate import FsdGate, gate_mode, make_gate
from search.proposals.measure_gate import MeasureGate, experiment_evidence, warm_start_order
from search.workflows.conflict_measures import check_measures, conflict_measures
from spaces.errors import UsageError

if TYPE_CHECKING:
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace

logger = logging.getLogger(__name__)


def gate_for_search(cfg, space: MixtureSpace, tolerance: float, index: SignIndex, *, progress=logger.info,
                    debug: bool = False) -> tuple[FsdGate, object]:
    """The search's gate and what orders its greedy warm start (the sign index, or a measure).

    ``conflict_measure: weight_fsd`` is the paper's FSD gate on the sign index. Any other measure
    (``activation_fsd``, the default, or ``auto``) computes the pairwise measures it needs once
    (cached in the store, so a later search of the same adapters reads them). A search whose
    mixtures all hold the same members (serving: every domain a target and a member) has no
    member set to tell apart: it computes nothing and keeps the sign index."""

    if cfg.search.gate_on_weight_signs or holds_one_member_set(cfg):
        return make_gate(cfg, space, tolerance), index

    candidates = list(cfg.search.gate_measures)
    if cfg.search.gate_chooses_measure:  # track what this store and data can measure
        candidates = [c for c in candidates if _measurable(cfg, c, progress)]
    measures = conflict_measures(cfg, candidates, progress=progress, debug=debug)
    mode, fixed = gate_mode(cfg.search.max_fsd)
    gate = MeasureGate(measures=measures, candidates=candidates, mode=mode, space=space, tolerance=tolerance,
                       fixed_threshold=fixed)
    order, why = warm_start_order(measures, experiment_evidence(cfg, measures, tolerance), cfg.search)
    if cfg.search.strategy == "tpe" and cfg.search.warm_start == "greedy_fsd":
        progress(f"conflict gate: tracks {', '.join(gate.candidates)}; {why}")
    return gate, order or index


def holds_one_member_set(cfg) -> bool:
    """Whether every mixture of ``cfg``'s search holds the same members: the targets are required
    and are every member domain (a serving search, a plan's group body)."""
    return cfg.search.require_targets and set(cfg.search.targets) == set(cfg.member_domains)


def _measurable(cfg, name: str, progress) -> bool:

    try:
        check_measures(cfg, [name])
    except UsageError as exc:
        progress(f"conflict gate: {name} is not tracked: {exc}")
        return False
    return True
