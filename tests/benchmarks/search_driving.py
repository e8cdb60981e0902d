"""Drives a real SignConflictSearcher by hand against an accuracy oracle, as Ray Tune would.

Shared by the search-efficiency benchmarks (``bench_search_efficiency.py``: a generated
oracle; ``bench_search_real.py``: the exhaustive table of real mixtures). One trial is in
flight at a time: ``suggest`` -> the oracle's accuracy -> ``on_trial_complete``. The budget
counts evaluated mixtures; proposals the pre-filter or the FSD gate reject and repeats of
evaluated mixtures cost nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from ray.tune.search import Searcher

from search.proposals.searcher import SignConflictSearcher
from search.proposals.strategies import make_strategy
from spaces.spec import MixtureSpec

if TYPE_CHECKING:
    from search.proposals.fsd_gate import FsdGate
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace


def drive_search(name: str, space: MixtureSpace, index: SignIndex, oracle: Callable[[MixtureSpec], float],
                 seed: int, budget: int, checkpoints: list[int], study_name: str, warm_start: str = "greedy_fsd",
                 good_enough: float = math.inf, gate: FsdGate | None = None,
                 switch_after: int | None = None, mixtures_per_trial: int = 1, order=None) -> dict[int, dict]:
    """Drives one SignConflictSearcher (strategy ``name``, optionally behind ``gate``) to
    ``budget`` evaluations; returns, for each checkpoint budget, a snapshot taken when it was
    reached (or at the end, when the search finished earlier): ``best`` accuracy, ``best_key``,
    ``evaluated``, ``filtered`` (rejected proposals), ``filtered_keys``, ``proposals``,
    ``reached`` (evaluations until ``best >= good_enough``, None if never), and with a gate
    its ``decision``, ``threshold``, ``rho``, ``p``, ``n`` and ``ever_filtered`` (the
    evaluation count at which its decision first became ``filter``, None if never).
    ``switch_after``: tpe's ``search.tpe_switch_after`` (None: TPE to the end).
    ``mixtures_per_trial``: ``search.mixtures_per_trial``, each batch proposed whole before any
    of its mixtures is told, and told one by one as Ray Tune would report them.
    ``order``: what orders the greedy warm start (a conflict measure, as ``signmix search``
    passes it under ``search.conflict_measure``); default the sign index."""
    strategy = make_strategy(name, space=space, index=index if order is None else order, seed=seed, budget=budget, study_name=study_name,
                             warm_start=warm_start, switch_after=switch_after)
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=budget, gate=gate,
                                    mixtures_per_trial=mixtures_per_trial)
    best, best_key, snapshots, i, reached, first_filter = -math.inf, None, {}, 0, None, None

    def snapshot() -> dict:
        snap = {"best": best, "best_key": best_key, "evaluated": searcher.counts.evaluated,
                "filtered": searcher.counts.filtered, "filtered_keys": set(searcher.counts.filtered_keys),
                "proposals": searcher.counts.proposals, "reached": reached}
        if gate is not None:
            ev = gate.evidence or gate.refresh()
            snap.update(decision=gate.decision, threshold=gate.threshold, rho=ev.rho, p=ev.p_value, n=ev.n,
                        ever_filtered=first_filter)
        return snap

    while True:
        trial_id = f"t{i}"
        i += 1
        cfg = searcher.suggest(trial_id)
        if cfg is None or cfg is Searcher.FINISHED:
            break
        for position, item in enumerate(cfg.get("batch", [cfg])):
            spec = MixtureSpec.from_dict(item["spec"])
            acc = oracle(spec)
            result = {"accuracy_mean": acc, "evaluated_fraction": 1.0}
            if "batch" in cfg:
                searcher.on_trial_result(trial_id, {**result, "batch_index": position})
            else:
                searcher.on_trial_complete(trial_id, result)
            if acc > best:
                best, best_key = acc, spec.key
            if reached is None and best >= good_enough:
                reached = searcher.counts.evaluated
            if gate is not None and first_filter is None and gate.decision == "filter":
                first_filter = searcher.counts.evaluated
            if searcher.counts.evaluated in checkpoints:
                snapshots[searcher.counts.evaluated] = snapshot()
        if "batch" in cfg:
            searcher.on_trial_complete(trial_id, result)
    final = snapshot()
    return {b: snapshots.get(b, final) for b in checkpoints}
