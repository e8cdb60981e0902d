"""``SignConflictSearcher`` driven by hand, as Ray Tune would drive it (no cluster)."""

from __future__ import annotations

import pytest
import torch
from ray.tune.search import Searcher

from search.proposals.searcher import METRIC, SignConflictSearcher
from search.proposals.strategies import Exhaustive, Strategy
from spaces.fsd import SignIndex
from spaces.space import MixtureSpace
from spaces.spec import MixtureSpec

NAMES = ("a", "b", "c", "t")
# t-a .1, t-b .5, t-c .2, a-b .4, a-c .2, b-c .6
MATRIX = [
    [0.0, 0.4, 0.2, 0.1],
    [0.4, 0.0, 0.6, 0.5],
    [0.2, 0.6, 0.0, 0.2],
    [0.1, 0.5, 0.2, 0.0],
]


class ScriptedStrategy(Strategy):
    """A fake strategy: proposes the given member lists in order and records every tell."""

    name = "scripted"

    def __init__(self, space: MixtureSpace, *member_lists: list[str]) -> None:
        self.space = space
        self.proposals = [space.params_for(m) for m in member_lists]
        self.told: list[tuple[int, str, float | None, float]] = []
        self.asked = 0

    def ask(self):
        if not self.proposals:
            return None
        self.asked += 1
        return self.asked - 1, self.proposals.pop(0)

    def tell(self, token, outcome, value=None, violation=0.0):
        self.told.append((token, outcome, value, violation))


class FakeTracker:
    """A fake SearchTracker that only records the calls the searcher makes."""

    def __init__(self) -> None:
        self.filtered: list[tuple[MixtureSpec, float, str]] = []

    def record_filtered(self, spec, fsd, reason):
        self.filtered.append((spec, fsd, reason))


@pytest.fixture(scope="module")
def index() -> SignIndex:
    return SignIndex(names=NAMES, signs=torch.zeros(len(NAMES), 4, dtype=torch.int8),
                     matrix=torch.tensor(MATRIX, dtype=torch.float64))


def make_space(**overrides) -> MixtureSpace:
    kwargs = dict(domains=NAMES, targets=("t",), max_fsd=0.3)
    kwargs.update(overrides)
    return MixtureSpace(**kwargs)


def searcher_for(index, space, *member_lists, tracker=None, budget=1000) -> tuple[SignConflictSearcher, ScriptedStrategy]:
    strategy = ScriptedStrategy(space, *member_lists)
    return SignConflictSearcher(strategy=strategy, space=space, index=index, tracker=tracker, budget=budget), strategy


def members(config: dict) -> tuple[str, ...]:
    return tuple(config["spec"]["members"])


# The pre-filter ----------------------------------------------------------------------------

def test_proposal_over_max_fsd_never_becomes_a_trial(index):
    space = make_space()
    tracker = FakeTracker()
    searcher, strategy = searcher_for(index, space, ["t", "b"], ["t", "a", "b"], ["t", "a"], tracker=tracker)
    config = searcher.suggest("trial_1")
    assert members(config) == ("a", "t")
    assert searcher.counts.proposals == 3
    assert searcher.counts.filtered == 2
    assert searcher.counts.trials == 1
    # Both filtered proposals were told as infeasible, with how far over the limit they were.
    assert strategy.told == [(0, "filtered", None, pytest.approx(0.5 - 0.3)),
                             (1, "filtered", None, pytest.approx((0.1 + 0.5 + 0.4) / 3 - 0.3))]
    assert [(s.members, fsd) for s, fsd, _ in tracker.filtered] == [
        (("b", "t"), pytest.approx(0.5)), (("a", "b", "t"), pytest.approx(1.0 / 3))]
    assert all("max_fsd" in reason for _, _, reason in tracker.filtered)


def test_filtered_proposals_work_without_a_tracker(index):
    searcher, _ = searcher_for(index, make_space(), ["t", "b"], ["t", "c"])
    assert members(searcher.suggest("trial_1")) == ("c", "t")
    assert searcher.counts.filtered == 1


def test_over_max_members_is_filtered_too(index):
    space = make_space(max_fsd=None, max_members=2)
    tracker = FakeTracker()
    searcher, strategy = searcher_for(index, space, ["t", "a", "c"], ["t", "c"], tracker=tracker)
    assert members(searcher.suggest("trial_1")) == ("c", "t")
    assert strategy.told == [(0, "filtered", None, 1.0)]
    assert "max_members" in tracker.filtered[0][2]


def test_a_proposal_with_no_member_is_told_infeasible_and_the_next_is_asked(index):
    # A data-only target: no member is required, and TPE samples each membership on its own.
    space = make_space(domains=("a", "b", "c"), require_targets=False, max_fsd=None)
    searcher, strategy = searcher_for(index, space, [], ["a", "c"])
    assert members(searcher.suggest("trial_1")) == ("a", "c")
    assert strategy.told == [(0, "filtered", None, 1.0)]
    assert searcher.counts.trials == 1 and searcher.counts.filtered == 0


@pytest.mark.parametrize("require_targets", [True, False])
def test_trial_config_carries_spec_fsd_and_key(index, require_targets):
    space = make_space(require_targets=require_targets, prune_ratios=(0.0, 0.9))
    params = space.params_for(["a", "c"] if not require_targets else ["a", "c", "t"], 0.9)
    strategy = ScriptedStrategy(space)
    strategy.proposals = [params]
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=1000)
    config = searcher.suggest("trial_1")
    expected = space.to_mixture_spec(params)
    spec = MixtureSpec.from_dict(config["spec"])  # what the trial does with it
    assert spec == expected
    assert config["mixture_key"] == spec.key == expected.key
    assert config["fsd"] == pytest.approx(index.subset_fsd(spec.members))
    assert (spec.prune_method, spec.prune_ratio) == ("magnitude", 0.9)
    assert searcher.specs["trial_1"] == expected


# Repeats ------------------------------------------------------------------------------------

def test_repeat_of_an_evaluated_mixture_is_answered_from_the_earlier_result(index):
    searcher, strategy = searcher_for(index, make_space(), ["t", "a"], ["a", "t"], ["t", "c"])
    first = searcher.suggest("trial_1")
    searcher.on_trial_complete("trial_1", {METRIC: 0.8})
    assert strategy.told == [(0, "evaluated", 0.8, 0.0)]
    second = searcher.suggest("trial_2")
    assert members(second) == ("c", "t")  # the repeat took no trial
    assert second["mixture_key"] != first["mixture_key"]
    assert strategy.told[1] == (1, "evaluated", 0.8, 0.0)
    assert searcher.counts.repeats == 1
    assert searcher.counts.trials == 2
    assert searcher.counts.evaluated == 1
    assert searcher.results == {first["mixture_key"]: 0.8}


def test_repeat_of_an_in_flight_mixture_waits_for_the_first(index):
    searcher, strategy = searcher_for(index, make_space(), ["t", "a"], ["t", "a"], ["t", "c"])
    first = searcher.suggest("trial_1")
    second = searcher.suggest("trial_2")
    assert members(first) == ("a", "t") and members(second) == ("c", "t")
    assert strategy.told == []  # token 1 waits for trial_1
    searcher.on_trial_complete("trial_1", {METRIC: 0.7})
    assert sorted(strategy.told) == [(0, "evaluated", 0.7, 0.0), (1, "evaluated", 0.7, 0.0)]
    searcher.on_trial_complete("trial_2", {METRIC: 0.6})
    assert strategy.told[-1] == (2, "evaluated", 0.6, 0.0)
    assert searcher.counts.trials == 2 and searcher.counts.repeats == 1


def test_repeat_of_a_filtered_mixture_is_filtered_again_and_recorded(index):
    tracker = FakeTracker()
    searcher, strategy = searcher_for(index, make_space(), ["t", "b"], ["t", "b"], ["t"], tracker=tracker)
    assert members(searcher.suggest("trial_1")) == ("t",)
    assert [o for _, o, _, _ in strategy.told] == ["filtered", "filtered"]
    assert searcher.counts.filtered == 2
    assert len(searcher.counts.filtered_keys) == 1


# Outcomes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("result, error, outcome, value", [
    ({METRIC: 0.75}, False, "evaluated", 0.75),
    ({METRIC: 0.75, "evaluated_fraction": 1.0}, False, "evaluated", 0.75),
    ({METRIC: 0.6, "evaluated_fraction": 0.5}, False, "stopped_early", 0.6),
    ({METRIC: 0.6}, True, "failed", None),  # a failed trial has no value, whatever it reported
    (None, True, "failed", None),
    (None, False, "failed", None),
    ({"fsd": 0.1}, False, "failed", None),
    ({METRIC: float("nan"), "mixture_error": "Traceback ..."}, False, "failed", None),  # a batch's mixture raised
], ids=["evaluated", "evaluated-full", "stopped-early", "error-with-result", "error", "no-result", "no-metric",
        "mixture-error"])
def test_trial_outcome_is_told_and_counted(index, result, error, outcome, value):
    searcher, strategy = searcher_for(index, make_space(), ["t", "a"], ["t", "a"], ["t", "c"])
    config = searcher.suggest("trial_1")
    searcher.trial_started("trial_1")
    searcher.on_trial_complete("trial_1", result, error=error)
    assert strategy.told == [(0, outcome, value, 0.0)]
    counts = searcher.counts
    assert (counts.evaluated, counts.stopped_early, counts.failed) == (
        int(outcome == "evaluated"), int(outcome == "stopped_early"), int(outcome == "failed"))
    assert (config["mixture_key"] in searcher.results) == (outcome == "evaluated")
    # A later proposal of the same mixture hears the same outcome instead of running again.
    assert members(searcher.suggest("trial_2")) == ("c", "t")
    assert strategy.told[1] == (1, outcome, value, 0.0)


def test_a_trial_that_failed_before_it_started_is_run_again_and_keeps_its_repeats(index):
    # Ray Tune fails a trial whose reused worker died while being reset, without retrying it.
    searcher, strategy = searcher_for(index, make_space(), ["t", "a"], ["t", "a"], ["t", "c"])
    first = searcher.suggest("trial_1")
    assert members(searcher.suggest("trial_2")) == ("c", "t")  # the repeat of (a, t) waits
    searcher.on_trial_complete("trial_1", None, error=True)  # never started
    assert strategy.told == [] and searcher.counts.failed == 0
    again = searcher.suggest("trial_3")
    assert again == first and strategy.asked == 3  # first, before asking the strategy again
    searcher.trial_started("trial_3")
    searcher.on_trial_complete("trial_3", {METRIC: 0.7})
    assert sorted(strategy.told) == [(0, "evaluated", 0.7, 0.0), (1, "evaluated", 0.7, 0.0)]
    assert searcher.counts.evaluated == 1 and searcher.counts.failed == 0


def test_a_mixture_whose_trials_never_start_fails_after_its_retries(index):
    from search.proposals.searcher import RETRIES_BEFORE_START

    searcher, strategy = searcher_for(index, make_space(), ["t", "a"])
    for attempt in range(RETRIES_BEFORE_START + 1):
        config = searcher.suggest(f"trial_{attempt}")
        assert members(config) == ("a", "t")
        assert searcher.suggest("another_slot") is None  # the strategy has nothing more
        searcher.on_trial_complete(f"trial_{attempt}", None, error=True)
    assert strategy.told == [(0, "failed", None, 0.0)] and searcher.counts.failed == 1
    assert searcher.suggest("trial_last") is Searcher.FINISHED
    assert searcher.counts.trials == RETRIES_BEFORE_START + 1


def test_a_trial_that_started_and_failed_is_not_run_again(index):
    searcher, strategy = searcher_for(index, make_space(), ["t", "a"])
    searcher.suggest("trial_1")
    searcher.trial_started("trial_1")
    searcher.on_trial_complete("trial_1", None, error=True)
    assert strategy.told == [(0, "failed", None, 0.0)] and searcher.retry == []


def test_completion_of_an_unknown_trial_is_ignored(index):
    searcher, strategy = searcher_for(index, make_space(), ["t"])
    searcher.on_trial_complete("never_suggested", {METRIC: 0.9})
    assert strategy.told == [] and searcher.counts.evaluated == 0


# The end of the search -------------------------------------------------------------------------

def test_exhaustive_search_finishes_when_the_space_is_done(index):
    space = make_space(domains=("a", "t"), max_fsd=None, prune_ratios=(0.0, 0.5))
    assert space.size() == 4
    searcher = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, budget=1000)
    configs = [searcher.suggest(f"trial_{i}") for i in range(4)]
    assert len({c["mixture_key"] for c in configs}) == 4
    assert searcher.suggest("trial_4") is None  # nothing new, but trials still run
    for i in range(4):
        searcher.on_trial_complete(f"trial_{i}", {METRIC: 0.5 + i / 10})
    assert searcher.suggest("trial_5") == Searcher.FINISHED
    assert searcher.counts.trials == 4 and searcher.counts.evaluated == 4


def test_finished_without_asking_once_every_mixture_is_evaluated_or_filtered(index):
    space = make_space(domains=("b", "t"))  # {t} runs, {b, t} (FSD .5) is filtered
    strategy = Exhaustive(space=space)
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=1000)
    assert members(searcher.suggest("trial_1")) == ("t",)
    searcher.on_trial_complete("trial_1", {METRIC: 0.9})
    assert searcher.suggest("trial_2") == Searcher.FINISHED
    assert searcher.counts.filtered == 1
    assert searcher.suggest("trial_3") == Searcher.FINISHED


class EndlessFilteredStrategy(Strategy):
    """A fake strategy that proposes the same filtered mixture forever."""

    def __init__(self, space: MixtureSpace) -> None:
        self.params = space.params_for(["t", "b"])
        self.asked = 0

    def ask(self):
        self.asked += 1
        return self.asked, self.params


def test_a_strategy_stuck_on_filtered_proposals_cannot_hang_the_search(index):
    space = make_space(domains=("a", "b", "c", "t"))
    strategy = EndlessFilteredStrategy(space)
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, max_idle_proposals=25, budget=1000)
    assert searcher.suggest("trial_1") == Searcher.FINISHED
    assert strategy.asked == 25
    assert searcher.counts.filtered == 25


def test_budget_counts_distinct_evaluated_mixtures_and_then_finishes(index):
    space = make_space(max_fsd=None)
    searcher = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, budget=2)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert first and second and first is not Searcher.FINISHED and second is not Searcher.FINISHED
    assert searcher.suggest("t3") is None, "budget reached with two in flight: wait, do not propose"
    searcher.on_trial_complete("t1", {"accuracy_mean": 0.5, "evaluated_fraction": 1.0})
    searcher.on_trial_complete("t2", {"accuracy_mean": 0.6, "evaluated_fraction": 1.0})
    assert searcher.suggest("t4") is Searcher.FINISHED
    assert searcher.counts.evaluated == 2


def test_save_and_restore_continue_where_the_snapshot_was(index, tmp_path):
    space = make_space(max_fsd=None)
    searcher = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, budget=3)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"accuracy_mean": 0.5, "evaluated_fraction": 1.0})
    live = searcher.suggest("t2")
    searcher.save(str(tmp_path / "state.pkl"))

    restored = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, budget=3)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.results == searcher.results and set(restored.live) == {"t2"}
    # Ray re-runs the unfinished trial t2 under its own id; the searcher knows it.
    restored.on_trial_complete("t2", {"accuracy_mean": 0.7, "evaluated_fraction": 1.0})
    third = restored.suggest("t3")
    assert third["mixture_key"] not in {live["mixture_key"], *searcher.results}


# A strategy stuck on what it has seen --------------------------------------------------------

def _run_to_the_end(searcher: SignConflictSearcher, objective) -> list[str]:
    """Drive the searcher as Ray Tune would, one trial at a time; the evaluated keys."""
    evaluated, i = [], 0
    while True:
        config = searcher.suggest(f"t{i}")
        if config is None or config is Searcher.FINISHED:
            return evaluated
        spec = MixtureSpec.from_dict(config["spec"])
        searcher.on_trial_complete(f"t{i}", {METRIC: objective(spec), "evaluated_fraction": 1.0})
        evaluated.append(spec.key)
        i += 1


def test_tpe_stuck_on_repeats_is_steered_to_unseen_mixtures_until_the_budget(index):
    from search.proposals.strategies import make_strategy

    space = make_space(max_fsd=None, prune_ratios=(0.0, 0.5))  # 8 subsets x 2 ratios
    budget = space.size()
    strategy = make_strategy("tpe", space=space, index=index, seed=3, budget=budget, study_name="stuck")
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=budget)
    # One mixture far better than the rest: TPE keeps proposing it once it has seen it.
    best = space.to_mixture_spec(space.params_for(["a"], 0.0)).key
    evaluated = _run_to_the_end(searcher, lambda spec: 0.9 if spec.key == best else 0.1)
    assert len(evaluated) == len(set(evaluated)) == budget == searcher.counts.evaluated
    assert searcher.counts.repeats > 0


class RepeatingStrategy(ScriptedStrategy):
    """Proposes one mixture forever, except what it is told to enqueue."""

    def __init__(self, space: MixtureSpace) -> None:
        super().__init__(space)
        self.enqueued: list[dict] = []

    def ask(self):
        self.asked += 1
        return self.asked, (self.enqueued.pop(0) if self.enqueued else self.space.params_for(["a"]))

    def enqueue(self, proposals):
        self.enqueued.extend(proposals)


def test_a_stuck_strategy_is_steered_every_50_idle_proposals_and_finishes_when_all_are_seen(index):
    space = make_space(max_fsd=None)  # 8 mixtures
    strategy = RepeatingStrategy(space)
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=100)
    evaluated = _run_to_the_end(searcher, lambda spec: 0.5)
    assert sorted(evaluated) == sorted(space.to_mixture_spec(p).key for p in space.enumerate())
    assert searcher.counts.repeats >= 50 * (space.size() - 1)


def test_random_params_never_draw_an_empty_subset(index):
    import random

    space = make_space(require_targets=False, prune_ratios=(0.0, 0.9))
    rng = random.Random(0)
    drawn = [space.to_mixture_spec(space.random_params(rng)) for _ in range(200)]
    assert all(spec.k >= 1 for spec in drawn)
    assert {spec.prune_ratio for spec in drawn} == {0.0, 0.9}


def test_an_unpickled_searcher_counts_no_trial_as_started(index):
    import pickle

    searcher, strategy = searcher_for(index, make_space(), ["t", "a"])
    searcher.suggest("trial_1")
    searcher.trial_started("trial_1")
    restored = pickle.loads(pickle.dumps(searcher))  # how Ray Tune snapshots it; the driver then dies
    assert restored.live == searcher.live and restored.started == set()
    # Restarted by the resumed search, the trial fails before it starts: it runs again.
    restored.on_trial_complete("trial_1", None, error=True)
    assert restored.counts.failed == 0 and [spec.key for _, spec, _ in restored.retry] == [
        spec.key for _, spec in searcher.live.values()]


# Batches: several mixtures per trial (search.mixtures_per_trial) ------------------------------

def batch_searcher(index, *member_lists, budget=1000, per_trial=3):
    strategy = ScriptedStrategy(make_space(), *member_lists)
    return SignConflictSearcher(strategy=strategy, space=make_space(), index=index, budget=budget,
                                mixtures_per_trial=per_trial), strategy


def test_a_batch_trial_carries_up_to_mixtures_per_trial_mixtures_each_told_as_it_reports(index):
    searcher, strategy = batch_searcher(index, ["t"], ["t", "a"], ["t", "c"], ["t", "a", "c"])
    config = searcher.suggest("trial_1")
    assert [tuple(m["spec"]["members"]) for m in config["batch"]] == [("t",), ("a", "t"), ("c", "t")]
    assert [m["mixture_key"] for m in config["batch"]] == [s.key for _, s in searcher.mixtures_of("trial_1")]
    searcher.trial_started("trial_1")
    searcher.on_trial_result("trial_1", {METRIC: 0.5, "batch_index": 1})
    assert strategy.told == [(1, "evaluated", 0.5, 0.0)], "told as soon as its own mixture is evaluated"
    searcher.on_trial_result("trial_1", {METRIC: 0.6, "batch_index": 0})
    searcher.on_trial_result("trial_1", {METRIC: float("nan"), "batch_index": 2, "mixture_error": "boom"})
    searcher.on_trial_complete("trial_1", {METRIC: float("nan"), "batch_index": 2, "mixture_error": "boom"})
    assert sorted(strategy.told) == [(0, "evaluated", 0.6, 0.0), (1, "evaluated", 0.5, 0.0), (2, "failed", None, 0.0)]
    assert (searcher.counts.evaluated, searcher.counts.failed, searcher.counts.trials) == (2, 1, 3)
    # A re-run of the batch (Ray Tune retries a trial) reports again what is done: ignored.
    searcher.on_trial_result("trial_1", {METRIC: 0.9, "batch_index": 0})
    assert len(strategy.told) == 3 and searcher.results[config["batch"][0]["mixture_key"]] == 0.6


def test_a_batch_is_cut_by_the_budget_and_the_budget_counts_mixtures(index):
    searcher, strategy = batch_searcher(index, ["t"], ["t", "a"], ["t", "c"], ["t", "a", "c"], budget=2)
    config = searcher.suggest("trial_1")
    assert len(config["batch"]) == 2 and strategy.asked == 2
    assert searcher.suggest("trial_2") is None, "budget in flight: wait"
    for i in range(2):
        searcher.on_trial_result("trial_1", {METRIC: 0.5, "batch_index": i})
    searcher.on_trial_complete("trial_1", {METRIC: 0.5, "batch_index": 1})
    assert searcher.suggest("trial_3") is Searcher.FINISHED and searcher.counts.evaluated == 2


def test_a_failed_batch_fails_the_mixtures_it_did_not_report_and_a_batch_that_never_started_runs_again(index):
    searcher, strategy = batch_searcher(index, ["t"], ["t", "a"], ["t", "c"], ["t", "a", "c"], per_trial=2)
    searcher.suggest("trial_1")
    searcher.trial_started("trial_1")
    searcher.on_trial_result("trial_1", {METRIC: 0.5, "batch_index": 0})
    searcher.on_trial_complete("trial_1", None, error=True)  # its worker died during the second
    assert strategy.told == [(0, "evaluated", 0.5, 0.0), (1, "failed", None, 0.0)]
    first = searcher.suggest("trial_2")
    searcher.on_trial_complete("trial_2", None, error=True)  # never started: both run again
    assert len(strategy.told) == 2 and searcher.counts.failed == 1
    again = searcher.suggest("trial_3")
    assert again["batch"] == first["batch"] and strategy.asked == 4


def test_a_batch_searcher_snapshot_restores_its_batches(index, tmp_path):
    searcher, _ = batch_searcher(index, ["t"], ["t", "a"], per_trial=2)
    searcher.suggest("trial_1")
    searcher.save(str(tmp_path / "snap"))
    restored, _ = batch_searcher(index, per_trial=2)
    restored.restore(str(tmp_path / "snap"))
    restored.trial_started("trial_1")
    restored.on_trial_result("trial_1", {METRIC: 0.4, "batch_index": 1})
    restored.on_trial_complete("trial_1", None, error=True)
    assert restored.counts.evaluated == 1 and restored.counts.failed == 1


# Singles first (a data-only target) --------------------------------------------------------------

class GateAgainstOneMember:
    """A gate whose threshold every single adapter would be over (the searcher must not ask it)."""

    def exploration(self, space, seen, rng):
        return []

    def check(self, verdict, members=()):
        from spaces.space import Verdict

        return Verdict(False, verdict.fsd, "over the gate", violation=1.0) if len(members) == 1 else verdict

    def observe(self, key, members, accuracy, index):
        pass


def test_a_data_only_search_evaluates_its_singles_first_unfiltered_and_counts_them_in_the_budget(index):
    from search.proposals.strategies import make_strategy

    class Nearest:  # the similarity order: b nearest, then a, then c
        def row_means(self):
            return {"b": 0.0, "a": 1.0, "c": 2.0}

    space = MixtureSpace(domains=("a", "b", "c"), targets=("t",), require_targets=False, max_fsd=None)
    strategy = make_strategy("tpe", space=space, index=Nearest(), seed=0, budget=3, study_name="singles-searcher",
                             singles=["b", "a"])
    searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, budget=3,
                                    gate=GateAgainstOneMember())
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert [members(first), members(second)] == [("b",), ("a",)] and searcher.counts.filtered == 0
    assert searcher.suggest("t2") is None and not searcher.exhausted  # waits for the singles' scores
    searcher.on_trial_complete("t0", {METRIC: 0.55, "evaluated_fraction": 1.0})
    searcher.on_trial_complete("t1", {METRIC: 0.70, "evaluated_fraction": 1.0})
    third = searcher.suggest("t3")
    assert members(third) == ("a", "b")  # the path from the best single (a), then b
    searcher.on_trial_complete("t3", {METRIC: 0.60, "evaluated_fraction": 1.0})
    assert searcher.suggest("t4") is Searcher.FINISHED  # the singles count: 3 evaluated in all
    assert searcher.counts.evaluated == 3
