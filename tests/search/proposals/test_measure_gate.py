"""The conflict gate choosing its measure by evidence: a real SignConflictSearcher around a real
Optuna strategy, driven by hand as Ray Tune would, with accuracy oracles over pairwise measures."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray.tune.search import Searcher

from search.workflows.confirmation_decision import trust_lines
from search.proposals.fsd_gate import FsdGate
from search.proposals.measure_gate import MEASURE_TAG, MeasureGate, warm_start_order
from search.settings.search_section import SearchConfig
from search.proposals.searcher import SignConflictSearcher
from search.proposals.strategies import greedy_path, make_strategy
from spaces.fsd import SignIndex
from spaces.measure_ranking import evidence_table
from spaces.measures import PairwiseMeasure
from spaces.space import MixtureSpace
from spaces.spec import MixtureSpec

N = 8
NAMES = tuple(f"d{i}" for i in range(N))


@pytest.fixture(scope="module")
def index() -> SignIndex:
    """Weight FSDs that say nothing: every adapter flips random signs of one shared direction."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4000, generator=gen)
    weights = {}
    for i in range(N):
        w = base.clone()
        flip = torch.rand(4000, generator=gen) < 0.1
        w[flip] = -w[flip]
        weights[f"d{i}"] = {"adapter.weight": w}
    return SignIndex.from_weights(weights)


def _matrix(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.uniform(0, 1, size=(N, N))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    return m


MEASURES = {"activation_fsd": PairwiseMeasure("activation_fsd", NAMES, _matrix(1)),
            "cross_head": PairwiseMeasure("cross_head", NAMES, _matrix(2))}


def space() -> MixtureSpace:
    return MixtureSpace(domains=NAMES, targets=("d0",), max_fsd=None)


def predicted_by(measure: str):
    def oracle(spec: MixtureSpec) -> float:
        noise = random.Random(spec.key).uniform(-0.01, 0.01)
        return 0.9 - 0.02 * spec.k - 0.3 * MEASURES[measure].subset(spec.members) + noise
    return oracle


def noise_only(spec: MixtureSpec) -> float:
    return 0.9 - 0.02 * spec.k + random.Random(spec.key).uniform(-0.05, 0.05)


def drive(index, oracle, *, candidates, mode="auto", fixed=None, budget=60, seed=0):
    sp = space()
    strategy = make_strategy("random", space=sp, index=index, seed=seed, budget=budget, study_name="measure-gate")
    gate = MeasureGate(measures=MEASURES, candidates=candidates, mode=mode, space=sp, tolerance=0.01,
                       fixed_threshold=fixed)
    searcher = SignConflictSearcher(strategy=strategy, space=sp, index=index, budget=budget, gate=gate)
    for i in range(10_000):
        cfg = searcher.suggest(f"t{i}")
        if cfg is None or cfg is Searcher.FINISHED:
            break
        spec = MixtureSpec.from_dict(cfg["spec"])
        searcher.on_trial_complete(f"t{i}", {"accuracy_mean": oracle(spec), "evaluated_fraction": 1.0})
    return searcher, gate


def test_auto_chooses_the_measure_that_predicts_and_filters_with_it(index):
    searcher, gate = drive(index, predicted_by("cross_head"),
                           candidates=["weight_fsd", "activation_fsd", "cross_head"])
    assert gate.chosen == "cross_head" and gate.decision == "filter"
    assert gate.summary().startswith("cross_head predicts accuracy here (partial Spearman -")
    assert searcher.counts.filtered > 0
    assert gate.mlflow_tags() == {MEASURE_TAG: "cross_head"}
    metrics = gate.mlflow_metrics()
    assert metrics["gate_rho/cross_head"] < -0.5 and metrics["gate_p/cross_head"] < 0.01
    assert set(k.split("/")[1] for k in metrics if k.startswith("gate_rho/")) == {
        "weight_fsd", "activation_fsd", "cross_head"}
    # the gate filtered on cross_head: what it rejected conflicts more, on that measure, than
    # what was evaluated, and more than the worst mixture within the tolerance of the best
    members = _members_by_key()
    rejected = [MEASURES["cross_head"].subset(members[k]) for k in searcher.counts.filtered_keys]
    evaluated = [MEASURES["cross_head"].subset(members[k]) for k in searcher.results]
    assert np.mean(rejected) > np.mean(evaluated)
    assert gate.threshold is not None and max(rejected) > gate.threshold


def _members_by_key() -> dict:
    sp = space()
    return {sp.to_mixture_spec(p).key: sp.to_mixture_spec(p).members for p in sp.enumerate()}


def test_auto_filters_nothing_when_no_measure_predicts(index):
    searcher, gate = drive(index, noise_only, candidates=["weight_fsd", "activation_fsd", "cross_head"])
    assert gate.chosen is None and gate.threshold is None
    assert searcher.counts.filtered == 0
    assert gate.summary().startswith("No measure predicts accuracy on these adapters (strongest: ")
    assert gate.mlflow_tags() == {MEASURE_TAG: "none"}


def test_a_fixed_measure_and_threshold_filter_on_that_measure(index):
    searcher, gate = drive(index, noise_only, candidates=["activation_fsd"], mode="fixed", fixed=0.3)
    assert gate.chosen == "activation_fsd" and gate.threshold == 0.3
    assert searcher.counts.filtered > 0
    members = _members_by_key()
    assert all(MEASURES["activation_fsd"].subset(members[k]) > 0.3 for k in searcher.counts.filtered_keys)
    assert all(MEASURES["activation_fsd"].subset(members[k]) <= 0.3 for k in searcher.results)
    assert gate.summary().startswith("Fixed max_fsd 0.3 on activation_fsd")


def test_the_gate_state_survives_a_snapshot(index):
    _, gate = drive(index, predicted_by("activation_fsd"), candidates=["weight_fsd", "activation_fsd"])
    again = MeasureGate(measures=MEASURES, candidates=["weight_fsd", "activation_fsd"], mode="auto", space=space(),
                        tolerance=0.01)
    again.set_state(gate.get_state())
    assert again.chosen == gate.chosen == "activation_fsd" and again.threshold == gate.threshold


def test_the_warm_start_orders_by_the_chosen_measure():
    rng = np.random.default_rng(0)
    k = rng.integers(2, 5, size=40)
    values = {"activation_fsd": rng.uniform(0, 1, 40), "cross_head": rng.uniform(0, 1, 40)}
    accuracy = 0.9 - 0.02 * k - 0.3 * values["activation_fsd"]
    auto = SearchConfig(targets=["d0"], conflict_measure="auto")
    measure, why = warm_start_order(MEASURES, evidence_table(values, k, accuracy), auto)
    assert measure is MEASURES["activation_fsd"] and why.startswith("the warm start orders by activation_fsd")
    # the greedy path's second mixture adds the adapter of smallest mean activation_fsd
    path = greedy_path(space(), measure)
    row = measure.row_means()
    best_other = min((d for d in NAMES if d != "d0"), key=lambda d: (row[d], d))
    assert path[1] == space().params_for([best_other])
    none, why = warm_start_order(MEASURES, evidence_table({"cross_head": values["cross_head"]}, k, accuracy), auto)
    assert none is None and "weight_fsd" in why
    fixed = SearchConfig(targets=["d0"], conflict_measure="cross_head")  # the configured measure, whatever the evidence
    measure, why = warm_start_order(MEASURES, evidence_table(values, k, accuracy), fixed)
    assert measure is MEASURES["cross_head"] and why == "the warm start orders by cross_head"


@pytest.mark.parametrize("conflict_measure, measures, chooses, on_weights", [
    ("auto", ("weight_fsd", "delta_fsd", "activation_fsd", "cross_head"), True, False),
    ("weight_fsd", ("weight_fsd",), False, True),
    ("activation_fsd", ("activation_fsd",), False, False),
])
def test_the_settings_say_what_the_gate_measures(conflict_measure, measures, chooses, on_weights):
    search = SearchConfig(targets=["d0"], conflict_measure=conflict_measure)
    assert (search.gate_measures, search.gate_chooses_measure, search.gate_on_weight_signs) == \
        (measures, chooses, on_weights)


def test_the_summary_names_the_conflict_gate_and_its_measure(index):
    _, gate = drive(index, predicted_by("cross_head"), candidates=["weight_fsd", "activation_fsd", "cross_head"])
    summary = SimpleNamespace(validation_warnings=[], fsd_gate=gate.summary(), fsd_gate_decision=gate.decision,
                              fsd_gate_label=gate.label, confirmation=None)
    (line,) = trust_lines(summary)
    assert line.startswith("conflict gate (filter): cross_head predicts accuracy here")
    assert FsdGate.label == "FSD gate"


def test_a_gate_that_is_off_names_itself_and_the_measure_it_reports(index):
    _, gate = drive(index, noise_only, candidates=["activation_fsd"], mode="off")
    assert gate.summary().startswith("Conflict gate off (max_fsd: null): nothing is filtered (activation_fsd: rho ")
    plain = FsdGate(mode="off", space=space(), tolerance=0.01)
    assert plain.summary() == "FSD gate off (max_fsd: null): nothing is filtered (FSD: not measured)"
