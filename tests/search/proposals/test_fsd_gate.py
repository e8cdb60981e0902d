"""The FSD gate (``max_fsd: auto``): a real SignConflictSearcher around a real Optuna strategy,
driven by hand as Ray Tune would, with an accuracy oracle over real FSDs of generated adapters."""

from __future__ import annotations

import math
import pickle
import random

import pytest
import torch
from ray.tune.search import Searcher

from search.proposals.fsd_gate import FsdGate, possible_sizes
from search.proposals.searcher import SignConflictSearcher
from search.proposals.strategies import make_strategy
from spaces.fsd import SignIndex
from spaces.space import MixtureSpace
from spaces.spec import MixtureSpec

N = 8


@pytest.fixture(scope="module")
def index() -> SignIndex:
    """Eight adapters whose pairwise FSDs spread widely: each is the shared direction with a
    different share of its signs flipped."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4000, generator=gen)
    weights = {}
    for i in range(N):
        w = base.clone()
        flip = torch.rand(4000, generator=gen) < 0.04 * i
        w[flip] = -w[flip]
        weights[f"d{i}"] = {"adapter.weight": w}
    return SignIndex.from_weights(weights)


def space() -> MixtureSpace:
    return MixtureSpace(domains=tuple(f"d{i}" for i in range(N)), targets=("d0",), max_fsd=None)


def drive(index, oracle, *, mode="auto", budget=40, seed=0):
    sp = space()
    strategy = make_strategy("random", space=sp, index=index, seed=seed, budget=budget, study_name="gate")
    gate = FsdGate(mode=mode, space=sp, tolerance=0.01, fixed_threshold=0.1 if mode == "fixed" else None)
    searcher = SignConflictSearcher(strategy=strategy, space=sp, index=index, budget=budget, gate=gate)
    evaluated = {}
    for i in range(10_000):
        cfg = searcher.suggest(f"t{i}")
        if cfg is None or cfg is Searcher.FINISHED:
            break
        spec = MixtureSpec.from_dict(cfg["spec"])
        evaluated[spec.key] = (spec, oracle(spec))
        searcher.on_trial_complete(f"t{i}", {"accuracy_mean": evaluated[spec.key][1], "evaluated_fraction": 1.0})
    return searcher, gate, evaluated


def noise(spec: MixtureSpec) -> float:
    return random.Random(spec.key).uniform(-0.02, 0.02)


def test_fsd_without_signal_filters_nothing(index):
    # Accuracy depends on the number of members and noise, not on FSD.
    searcher, gate, evaluated = drive(index, lambda s: 0.8 - 0.03 * s.k + noise(s))
    assert len(evaluated) == 40
    assert searcher.counts.filtered == 0
    assert gate.decision == "no_signal" and gate.threshold is None
    assert gate.evidence.n == 40 and "nothing is filtered" in gate.summary()


def test_fsd_with_signal_filters_and_the_optimum_survives(index):
    def oracle(s):  # more members help, sign conflict hurts: the optimum is not the lowest FSD
        return 0.6 + 0.05 * s.k - index.subset_fsd(s.members) + noise(s) / 4

    every = [space().to_mixture_spec(p) for p in space().enumerate()]
    optimum = max(every, key=oracle)
    searcher, gate, evaluated = drive(index, oracle, budget=60)
    assert gate.decision == "filter" and gate.evidence.rho < 0 and gate.evidence.p_value < 0.05
    assert searcher.counts.filtered > 0
    assert optimum.key in evaluated, "the best mixture of the space was evaluated"
    assert optimum.k > 2 and index.subset_fsd(optimum.members) > 0.1
    assert optimum.key not in searcher.counts.filtered_keys
    # Filtered only once every size had its mixtures: the first proposals all ran.
    assert all(n >= min(2, available) for n, available in
               ((sum(1 for s, _ in evaluated.values() if s.k == size), avail)
                for size, avail in possible_sizes(space()).items()))
    assert "FSD predicts accuracy here" in gate.summary()


def test_nothing_is_filtered_before_every_size_is_covered(index):
    gate = FsdGate(mode="auto", space=space(), tolerance=0.0)
    # 12 mixtures, strong signal, but only sizes 2 and 3.
    for i in range(12):
        k = 2 + i % 2
        gate.record(f"m{i}", 0.05 * i, k, 0.9 - 0.05 * i)
    assert gate.threshold is None and gate.decision == "too_few"
    assert "Waiting for mixtures of every size" in gate.summary()
    assert set(gate.missing_sizes()) == set(possible_sizes(space())) - {2, 3}


def test_the_gate_asks_for_sizes_only_to_confirm_a_signal(index):
    # Exploring sizes only serves a signal that needs confirming: without one the strategy
    # keeps its evaluations (on real data, exploring up front cost TPE 3.5 points of regret).
    sp = space()
    rng = random.Random(0)
    quiet = FsdGate(mode="auto", space=sp, tolerance=0.0)
    assert quiet.exploration(sp, set(), rng) == [], "no evidence yet: nothing asked"
    for i in range(10):  # accuracy unrelated to FSD, sizes 2 and 3 only
        quiet.record(f"m{i}", 0.05 * i, 2 + i % 2, 0.8 + (0.05 if i % 3 == 0 else 0.0))
    assert quiet.decision == "no_signal" and quiet.missing_sizes()
    assert quiet.exploration(sp, set(), rng) == []
    signal = FsdGate(mode="auto", space=sp, tolerance=0.0)
    for i in range(12):  # strong signal, sizes 2 and 3 only
        signal.record(f"m{i}", 0.05 * i, 2 + i % 2, 0.9 - 0.05 * i)
    asked = signal.exploration(sp, set(), rng)
    assert signal.decision == "too_few" and asked
    assert {sp.to_mixture_spec(p).k for p in asked} == set(signal.missing_sizes())


def test_a_fixed_number_and_null_override_the_evidence(index):
    fixed, gate, _ = drive(index, lambda s: 0.8 + noise(s), mode="fixed", budget=10)
    assert gate.decision == "fixed" and gate.threshold == 0.1 and fixed.counts.filtered > 0
    off, gate, _ = drive(index, lambda s: 0.9 - index.subset_fsd(s.members), mode="off", budget=30)
    assert gate.decision == "off" and off.counts.filtered == 0
    assert not math.isnan(gate.evidence.rho), "evidence is still measured and reported"


def test_the_gates_evidence_survives_a_searcher_snapshot(index, tmp_path):
    searcher, gate, _ = drive(index, lambda s: 0.9 - 1.5 * index.subset_fsd(s.members), budget=30)
    searcher.save(str(tmp_path / "state"))
    sp = space()
    again = SignConflictSearcher(strategy=make_strategy("random", space=sp, index=index, seed=0, budget=30,
                                                        study_name="gate2"),
                                 space=sp, index=index, budget=30,
                                 gate=FsdGate(mode="auto", space=sp, tolerance=0.01))
    again.restore(str(tmp_path / "state"))
    assert again.gate.points == gate.points
    assert again.gate.threshold == gate.threshold
    assert pickle.loads(pickle.dumps(gate)).threshold == gate.threshold


def test_mixtures_evaluated_after_the_last_snapshot_rejoin_the_gates_evidence(index, tmp_path):
    oracle = lambda s: 0.9 - 1.5 * index.subset_fsd(s.members)  # noqa: E731
    searcher, gate, evaluated = drive(index, oracle, budget=20)
    searcher.save(str(tmp_path / "state"))
    # Five more mixtures finished after the snapshot, before the crash: MLflow has them.
    sp = space()
    later = [sp.to_mixture_spec(p) for p in sp.enumerate()]
    later = [s for s in later if s.key not in evaluated][:5]

    class Recorded:
        def reload(self):
            return {s.key: ("evaluated", {"accuracy_mean": oracle(s)}, list(s.members)) for s in later}

    again = SignConflictSearcher(strategy=make_strategy("random", space=sp, index=index, seed=0, budget=30,
                                                        study_name="gate3"),
                                 space=sp, index=index, budget=30, tracker=Recorded(),
                                 gate=FsdGate(mode="auto", space=sp, tolerance=0.01))
    again.restore(str(tmp_path / "state"))
    assert set(again.gate.points) == set(gate.points) | {s.key for s in later}
    for s in later:
        assert again.gate.points[s.key] == (index.subset_fsd(s.members), s.k, oracle(s))
    assert again.counts.evaluated == searcher.counts.evaluated + 5


def test_past_the_first_mixtures_the_evidence_is_refreshed_every_one_percent_and_at_the_end(index, monkeypatch):
    from search.proposals import fsd_gate as gate_module

    monkeypatch.setattr(gate_module, "REFRESH_EACH_UNTIL", 20)
    gate = FsdGate(mode="auto", space=space(), tolerance=0.01)
    refreshes = []
    real_refresh = gate.refresh
    monkeypatch.setattr(gate, "refresh", lambda: refreshes.append(len(gate.points)) or real_refresh())
    for i in range(400):
        gate.record(f"m{i}", 0.1 + i / 1000, 1 + i % 3, 0.7)
    assert refreshes[:20] == list(range(1, 21)), "each of the first ones"
    later = refreshes[20:]
    assert all(b >= a * 1.01 for a, b in zip(refreshes[19:], later)) and 20 < len(later) < 200
    real_refresh()
    assert gate.evidence.n == 400, "an explicit refresh (the search's end) reads every mixture"
