"""Search strategies: what each proposes, in which order, and what TPE learns from filtering."""

from __future__ import annotations

import pickle

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.proposals.strategies import STRATEGIES, Exhaustive, GreedyFsd, OptunaStrategy, SoupAll, make_strategy
from spaces.errors import SpecError
from spaces.fsd import SignIndex
from spaces.merge_dimensions import MergeChoices
from spaces.space import MixtureSpace

NAMES = ("a", "b", "c", "d", "t")
# Row means (sum / 4): a .30, b .525, c .25, d .40, t .225 -> ascending t, c, a, d, b,
# an order that is neither alphabetical nor the order of the names.
MATRIX = [
    [0.0, 0.5, 0.1, 0.4, 0.2],
    [0.5, 0.0, 0.6, 0.7, 0.3],
    [0.1, 0.6, 0.0, 0.2, 0.1],
    [0.4, 0.7, 0.2, 0.0, 0.3],
    [0.2, 0.3, 0.1, 0.3, 0.0],
]


@pytest.fixture(scope="module")
def index() -> SignIndex:
    return SignIndex(names=NAMES, signs=torch.zeros(len(NAMES), 8, dtype=torch.int8),
                     matrix=torch.tensor(MATRIX, dtype=torch.float64))


def drain(strategy) -> list[tuple[int, dict]]:
    out = []
    while (proposal := strategy.ask()) is not None:
        out.append(proposal)
        assert len(out) < 10_000
    return out


def members_of(space: MixtureSpace, proposals) -> list[tuple[str, ...]]:
    return [space.to_mixture_spec(params).members for _, params in proposals]


# greedy_fsd ------------------------------------------------------------------------------

def test_row_means_of_the_hand_made_matrix(index):
    assert index.row_means() == pytest.approx({"a": 0.3, "b": 0.525, "c": 0.25, "d": 0.4, "t": 0.225})


@pytest.mark.parametrize("targets, expected", [
    (("t",), [("t",), ("c", "t"), ("a", "c", "t"), ("a", "c", "d", "t"), ("a", "b", "c", "d", "t")]),
    # The worst adapter as target: it is always in, the others join by ascending mean FSD.
    (("b",), [("b",), ("b", "t"), ("b", "c", "t"), ("a", "b", "c", "t"), ("a", "b", "c", "d", "t")]),
    (("b", "d"), [("b", "d"), ("b", "d", "t"), ("b", "c", "d", "t"), ("a", "b", "c", "d", "t")]),
], ids=["best-target", "worst-target", "two-targets"])
def test_greedy_fsd_adds_adapters_in_ascending_row_mean_order(index, targets, expected):
    space = MixtureSpace(domains=NAMES, targets=targets)
    proposals = drain(GreedyFsd(space=space, index=index))
    got = members_of(space, proposals)
    assert got == expected
    # l = |targets| .. N, each once.
    assert [len(m) for m in got] == list(range(len(targets), len(NAMES) + 1))
    assert all(set(targets) <= set(m) for m in got)
    assert [token for token, _ in proposals] == list(range(len(expected)))


def test_greedy_fsd_without_required_targets_is_algorithm_1_for_l_1_to_n(index):
    space = MixtureSpace(domains=NAMES, targets=("b",), require_targets=False)
    got = members_of(space, drain(GreedyFsd(space=space, index=index)))
    assert got == [("t",), ("c", "t"), ("a", "c", "t"), ("a", "c", "d", "t"), ("a", "b", "c", "d", "t")]


@pytest.mark.parametrize("require_targets, expected", [
    (True, [("b",), ("b", "t"), ("b", "c", "t")]),
    (False, [("t",), ("c", "t"), ("a", "c", "t")]),
])
def test_greedy_fsd_stops_at_max_members(index, require_targets, expected):
    # A longer mixture is outside the space: proposing it would only be rejected.
    space = MixtureSpace(domains=NAMES, targets=("b",), require_targets=require_targets, max_members=3)
    assert members_of(space, drain(GreedyFsd(space=space, index=index))) == expected


def test_greedy_fsd_breaks_ties_by_name():
    names = ("z", "y", "x")
    index = SignIndex(names=names, signs=torch.zeros(3, 2, dtype=torch.int8),
                      matrix=torch.tensor([[0, .2, .2], [.2, 0, .2], [.2, .2, 0]], dtype=torch.float64))
    space = MixtureSpace(domains=names, targets=("z",))
    assert members_of(space, drain(GreedyFsd(space=space, index=index))) == [
        ("z",), ("x", "z"), ("x", "y", "z")]


def test_list_strategies_stay_finished(index):
    space = MixtureSpace(domains=NAMES, targets=("t",))
    strategy = GreedyFsd(space=space, index=index)
    drain(strategy)
    assert strategy.ask() is None
    assert strategy.ask() is None


# exhaustive / soup_all ---------------------------------------------------------------------

@pytest.mark.parametrize("require_targets", [True, False])
def test_exhaustive_yields_every_element_once_then_none(require_targets):
    space = MixtureSpace(domains=("a", "b", "c", "d"), targets=("b",), prune_ratios=(0.0, 0.9),
                         require_targets=require_targets)
    strategy = make_strategy("exhaustive", space=space, index=None, seed=0, budget=1, study_name="x")
    assert isinstance(strategy, Exhaustive)
    proposals = drain(strategy)
    keys = [space.to_mixture_spec(params).key for _, params in proposals]
    assert len(keys) == space.size() == len(set(keys))
    assert [params for _, params in proposals] == list(space.enumerate())
    assert [token for token, _ in proposals] == list(range(space.size()))
    assert strategy.ask() is None


def test_exhaustive_proposes_a_mixture_once_however_many_operator_choices_merge_like_it():
    from spaces.merge_dimensions import MergeChoices

    # task arithmetic at λ 1 is the average: 4 subsets x (average, TA λ 1, TA λ 2) name 8 mixtures
    space = MixtureSpace(domains=("a", "b", "c"), targets=("b",),
                         merge=MergeChoices(merge_methods=("average", "task_arithmetic"), lambdas=(1.0, 2.0)))
    strategy = make_strategy("exhaustive", space=space, index=None, seed=0, budget=1, study_name="x")
    specs = [space.to_mixture_spec(params) for _, params in drain(strategy)]
    assert space.size() == 12
    assert len(specs) == len({s.key for s in specs}) == 8
    assert sorted((s.members, s.merge_method) for s in specs) == sorted(
        (members, method) for members in (("b",), ("a", "b"), ("b", "c"), ("a", "b", "c"))
        for method in ("average", "task_arithmetic"))


TIES_FIRST = MergeChoices(merge_methods=("ties", "average"), densities=(0.2,))


@pytest.mark.parametrize("targets, require_targets", [(("t",), True), (("x",), False)], ids=["in-domain", "new-domain"])
def test_the_greedy_path_merges_with_the_first_operator_and_keeps_a_lone_adapter_as_it_is(index, targets,
                                                                                            require_targets):
    space = MixtureSpace(domains=NAMES, targets=targets, require_targets=require_targets, merge=TIES_FIRST)
    specs = [space.to_mixture_spec(params) for _, params in drain(GreedyFsd(space=space, index=index))]
    assert [s.k for s in specs] == [1, 2, 3, 4, 5]
    assert (specs[0].merge_method, specs[0].members) == ("average", ("t",))  # the adapter, not trimmed by TIES
    assert all(s.merge_method == "ties" and s.density == 0.2 for s in specs[1:])


@pytest.mark.parametrize("require_targets", [True, False])
def test_soup_all_averages_whatever_operator_comes_first(require_targets):
    space = MixtureSpace(domains=("c", "a", "b"), targets=("b",), require_targets=require_targets, merge=TIES_FIRST)
    ((_, params),) = drain(make_strategy("soup_all", space=space, index=None, seed=0, budget=1, study_name="x"))
    spec = space.to_mixture_spec(params)
    assert spec.members == ("a", "b", "c") and spec.merge_method == "average" and spec.is_uniform
    no_average = MixtureSpace(domains=("c", "a", "b"), targets=("b",), merge=MergeChoices(merge_methods=("ties",)))
    with pytest.raises(SpecError, match="soup_all is the uniform average of every adapter.*add average"):
        make_strategy("soup_all", space=no_average, index=None, seed=0, budget=1, study_name="y")


@pytest.mark.parametrize("require_targets", [True, False])
def test_soup_all_proposes_every_domain_once(require_targets):
    space = MixtureSpace(domains=("c", "a", "b"), targets=("b",), prune_ratios=(0.5, 0.0),
                         require_targets=require_targets)
    strategy = make_strategy("soup_all", space=space, index=None, seed=0, budget=1, study_name="x")
    assert isinstance(strategy, SoupAll)
    proposals = drain(strategy)
    assert len(proposals) == 1
    spec = space.to_mixture_spec(proposals[0][1])
    assert spec.members == ("a", "b", "c")
    assert spec.is_uniform
    assert spec.prune_ratio == 0.0


# tpe / random ---------------------------------------------------------------------------

SPACE = MixtureSpace(domains=("a", "b", "c", "d", "e"), targets=("a",), prune_ratios=(0.0, 0.5, 0.9))


def objective(members: tuple[str, ...], ratio: float) -> float:
    """A made-up accuracy that prefers small mixtures with some pruning."""
    return 0.9 - 0.05 * len(members) + (0.02 if ratio == 0.5 else 0.0)


def run_optuna(name: str, seed: int, n: int, *, study_name: str = "s") -> list[dict]:
    strategy = make_strategy(name, space=SPACE, index=None, seed=seed, budget=n, study_name=study_name)
    assert strategy.name == name
    asked = []
    for _ in range(n):
        token, params = strategy.ask()
        asked.append(params)
        spec = SPACE.to_mixture_spec(params)  # every proposal is a valid point of the space
        strategy.tell(token, "evaluated", value=objective(spec.members, spec.prune_ratio))
    return asked


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_optuna_strategies_are_reproducible_with_the_same_seed(name):
    first = run_optuna(name, seed=7, n=20, study_name="one")
    again = run_optuna(name, seed=7, n=20, study_name="two")
    assert first == again
    assert run_optuna(name, seed=8, n=20) != first


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_optuna_proposals_cover_the_space_parameters(name):
    strategy = make_strategy(name, space=SPACE, index=None, seed=0, budget=10, study_name="s")
    _, params = strategy.ask()
    assert set(params) == {"use.b", "use.c", "use.d", "use.e", "prune_ratio"}
    assert params["prune_ratio"] in SPACE.prune_ratios


def test_single_ratio_is_not_searched():
    space = MixtureSpace(domains=("a", "b"), targets=("a",), prune_ratios=(0.9,))
    strategy = make_strategy("tpe", space=space, index=None, seed=0, budget=4, study_name="s")
    token, params = strategy.ask()
    assert "prune_ratio" not in params and "prune_ratio" not in strategy.study.trials[token].params
    assert space.to_mixture_spec(params).prune_ratio == 0.9


def test_optuna_tell_records_each_outcome_in_the_study():
    from optuna.trial import TrialState

    strategy = make_strategy("random", space=SPACE, index=None, seed=0, budget=4, study_name="s")
    tokens = [strategy.ask()[0] for _ in range(4)]
    strategy.tell(tokens[0], "evaluated", value=0.8)
    strategy.tell(tokens[1], "filtered", violation=0.25)
    strategy.tell(tokens[2], "stopped_early", value=0.4)
    strategy.tell(tokens[3], "failed")
    strategy.tell(tokens[3], "evaluated", value=1.0)  # a second tell of the same token is ignored
    trials = strategy.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.8
    assert [t.user_attrs["signmix.outcome"] for t in trials] == ["evaluated", "filtered", "stopped_early", "failed"]
    assert list(trials[0].constraints.values()) == [0.0]
    assert list(trials[1].constraints.values()) == [0.25]
    assert strategy.study.best_trial.number == tokens[0]


# tpe's warm start -----------------------------------------------------------------------

def test_tpe_asks_the_greedy_path_first_then_samples(index):
    space = MixtureSpace(domains=NAMES, targets=("t",), prune_ratios=(0.0, 0.5))
    strategy = make_strategy("tpe", space=space, index=index, seed=0, budget=20, study_name="warm")
    first = [strategy.ask() for _ in range(5)]
    assert members_of(space, first) == members_of(space, drain(GreedyFsd(space=space, index=index)))
    assert all(params["prune_ratio"] == 0.0 for _, params in first)  # the greedy path is unpruned
    for token, params in first:
        strategy.tell(token, "evaluated", value=0.5)
    assert strategy.study.get_trials(states=(TrialState.WAITING,)) == []
    token, params = strategy.ask()  # sampled now: a new trial, not a replay of the path
    assert strategy.study.trials[token].system_attrs.get("fixed_params") is None


def test_tpe_without_warm_start_enqueues_nothing(index):
    space = MixtureSpace(domains=NAMES, targets=("t",))
    strategy = make_strategy("tpe", space=space, index=index, seed=0, budget=20, study_name="cold",
                             warm_start="none")
    assert strategy.study.get_trials(states=(TrialState.WAITING,)) == []


# Where a search keeps its study: the journal file, and SQLite (searches started before it).
STORAGES = {"journal": lambda tmp: str(tmp / "optuna.journal"), "sqlite": lambda tmp: f"sqlite:///{tmp / 'optuna.db'}"}


@pytest.mark.parametrize("kind", list(STORAGES))
def test_the_warm_start_survives_a_restart_of_the_study(index, tmp_path, kind):
    space = MixtureSpace(domains=NAMES, targets=("t",))
    storage = STORAGES[kind](tmp_path)
    strategy = make_strategy("tpe", space=space, index=index, seed=0, budget=20, study_name="w", storage=storage)
    strategy.tell(*strategy.ask()[:1], "evaluated", value=0.5)
    again = OptunaStrategy(space=space, sampler=optuna.samplers.TPESampler(seed=0), study_name="w", storage=storage)
    rest = [again.ask() for _ in range(4)]
    assert members_of(space, rest) == members_of(space, drain(GreedyFsd(space=space, index=index)))[1:]


@pytest.mark.parametrize("kind", list(STORAGES))
def test_a_trial_asked_before_a_restart_is_told_to_the_restarted_study(tmp_path, kind):
    storage = STORAGES[kind](tmp_path)
    first = OptunaStrategy(space=SPACE, sampler=optuna.samplers.RandomSampler(seed=0), study_name="r", storage=storage)
    (lost, lost_params), (filtered, _) = first.ask(), first.ask()
    again = OptunaStrategy(space=SPACE, sampler=optuna.samplers.RandomSampler(seed=0), study_name="r", storage=storage)
    assert set(again.pending()) == {lost, filtered}
    again.tell(lost, "evaluated", value=0.7)
    again.tell(filtered, "filtered", violation=0.2)
    again.tell(lost, "evaluated", value=0.1)  # told already: ignored
    trials = again.study.trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    evaluated, infeasible = trials[2:]
    assert (evaluated.params, evaluated.value, evaluated.user_attrs["signmix.outcome"]) == (lost_params, 0.7, "evaluated")
    assert list(evaluated.constraints.values()) == [0.0] and list(infeasible.constraints.values()) == [0.2]
    assert again.pending() == {}


def test_a_journal_torn_by_a_power_loss_loses_its_last_record_and_nothing_else(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "optuna.journal"
    first = OptunaStrategy(space=SPACE, sampler=optuna.samplers.RandomSampler(seed=0), study_name="j",
                           storage=str(path))
    for value in (0.5, 0.6):
        first.tell(first.ask()[0], "evaluated", value=value)
    with open(path, "ab") as fh:  # half of a third record, as a power loss mid-write leaves it
        fh.write(b'{"op_code":4,"worker_id":"w","study_id":0')
    again = OptunaStrategy(space=SPACE, sampler=optuna.samplers.RandomSampler(seed=0), study_name="j",
                           storage=str(path))
    again.tell(again.ask()[0], "evaluated", value=0.7)
    # Optuna's own reader sees the whole study: the two records before the tear and the new one.
    plain = optuna.load_study(study_name="j", storage=optuna.storages.JournalStorage(JournalFileBackend(str(path))))
    assert [t.value for t in plain.trials] == [0.5, 0.6, 0.7]


def test_tpe_learns_to_avoid_filtered_domain():
    # Every feasible value is below the filtered placeholder (0.0): only the constraint can
    # teach TPE to avoid "bad" (with constraints ignored it would seek it out, ~80% late on).
    space = MixtureSpace(domains=("a", "b", "bad", "c", "d"), targets=("a",), prune_ratios=(0.0,))
    strategy = make_strategy("tpe", space=space, index=None, seed=3, budget=60, study_name="learn")
    has_bad = []
    for _ in range(60):
        token, params = strategy.ask()
        spec = space.to_mixture_spec(params)
        has_bad.append("bad" in spec.members)
        if "bad" in spec.members:
            strategy.tell(token, "filtered", violation=0.3)
        else:
            strategy.tell(token, "evaluated", value=objective(spec.members, 0.0) - 1.0)
    first, last = sum(has_bad[:10]) / 10, sum(has_bad[-30:]) / 30
    assert last < 0.35, has_bad
    assert last < first, has_bad


def test_unknown_strategy_name_lists_the_names():
    with pytest.raises(ValueError) as info:
        make_strategy("bayes", space=SPACE, index=None, seed=0, budget=1, study_name="s")
    message = str(info.value)
    assert "'bayes'" in message
    for name in STRATEGIES:
        assert name in message


# Past tpe_switch_after, mutations of the best mixtures propose -------------------------------

def _drive(strategy, space, n, value_of):
    for _ in range(n):
        token, params = strategy.ask()
        spec = space.to_mixture_spec(params)
        if "bad" in spec.members:
            strategy.tell(token, "filtered", violation=0.5)
        else:
            strategy.tell(token, "evaluated", value=value_of(spec))


SWITCH_SPACE = MixtureSpace(domains=("a", "b", "bad", "c", "d", "e"), targets=("a",), prune_ratios=(0.0, 0.5))


def test_past_the_switch_mutations_of_the_best_mixtures_propose_and_the_study_stops_growing(tmp_path):
    from search.proposals.local_search import TOKEN_BASE

    value_of = lambda spec: objective(spec.members, spec.prune_ratio)  # noqa: E731
    strategy = make_strategy("tpe", space=SWITCH_SPACE, index=None, seed=1, budget=100, study_name="switch",
                             storage=str(tmp_path / "optuna.journal"), switch_after=20)
    _drive(strategy, SWITCH_SPACE, 20, value_of)
    assert strategy.local is None
    asked_before = {tuple(sorted(t.params.items())) for t in strategy.study.trials}
    token, params = strategy.ask()
    assert token >= TOKEN_BASE and strategy.local is not None
    # It starts from every distinct feasible mixture TPE evaluated, never a filtered one.
    evaluated = {tuple(sorted(t.params.items())) for t in strategy.study.trials
                 if t.user_attrs.get("signmix.outcome") == "evaluated"}
    assert set(strategy.local.elite) == evaluated
    assert tuple(sorted(params.items())) not in asked_before, "an unseen mixture while there are some"
    parents = [dict(k) for k in evaluated]
    assert any(sum(params.get(k) != v for k, v in parent.items()) <= 2 for parent in parents)
    strategy.tell(token, "evaluated", value=0.99)
    assert max(v for v, _ in strategy.local.elite.values()) == 0.99  # it learns from what it proposed
    _drive(strategy, SWITCH_SPACE, 30, value_of)
    assert len(strategy.study.trials) == 20, "the Optuna study is asked nothing more"
    # A snapshot (Ray Tune pickles the searcher) continues where it was.
    again = pickle.loads(pickle.dumps(strategy))
    assert again.ask() == strategy.ask()


def test_the_mutations_are_reproducible_and_find_the_best_mixture_of_a_small_space():
    value_of = lambda spec: objective(spec.members, spec.prune_ratio) + (0.5 if "e" in spec.members else 0.0)  # noqa: E731
    runs = []
    for _ in range(2):
        strategy = make_strategy("tpe", space=SWITCH_SPACE, index=None, seed=4, budget=200, study_name="again",
                                 switch_after=5, warm_start="none")
        asked = []
        for _ in range(60):
            token, params = strategy.ask()
            asked.append(params)
            spec = SWITCH_SPACE.to_mixture_spec(params)
            strategy.tell(token, *(("filtered", None) if "bad" in spec.members else ("evaluated", value_of(spec))))
        runs.append(asked)
    assert runs[0] == runs[1]
    best = max((SWITCH_SPACE.to_mixture_spec(p) for p in SWITCH_SPACE.enumerate()
                if "bad" not in SWITCH_SPACE.to_mixture_spec(p).members), key=value_of)
    assert best.key in {SWITCH_SPACE.to_mixture_spec(p).key for p in runs[0]}


def test_without_a_switch_tpe_proposes_to_the_end():
    strategy = make_strategy("tpe", space=SPACE, index=None, seed=0, budget=30, study_name="no-switch",
                             switch_after=None)
    for _ in range(30):
        token, params = strategy.ask()
        strategy.tell(token, "evaluated", value=objective(SPACE.to_mixture_spec(params).members, 0.0))
    assert strategy.local is None and len(strategy.study.trials) == 30


# Singles first: a data-only target's library adapters alone, then the path from the best ------------

class RankedOrder:
    """A similarity order (nearest first) as the greedy path reads one: smaller row mean first."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def row_means(self) -> dict[str, float]:
        return {d: float(i) for i, d in enumerate(self.names)}


def data_only_space() -> MixtureSpace:
    return MixtureSpace(domains=("a", "b", "c", "d"), targets=("new",), require_targets=False, max_fsd=None,
                        merge=MergeChoices(merge_methods=("ties", "average")))


def test_a_data_only_search_asks_the_singles_in_order_then_waits_for_them_before_the_path():
    space = data_only_space()
    strategy = make_strategy("tpe", space=space, index=RankedOrder("c", "a", "d", "b"), seed=0, budget=6,
                             study_name="singles", singles=["c", "a"])
    first = [strategy.ask(), strategy.ask()]
    assert members_of(space, first) == [("c",), ("a",)]  # nearest first, each alone
    assert all(params["merge_method"] == "average" for _, params in first)  # as it is, not TIES-trimmed
    assert strategy.ask() is None and strategy.waits_for_results()  # the path needs their scores
    strategy.tell(first[0][0], "evaluated", value=0.6)
    assert strategy.ask() is None and strategy.waits_for_results()
    strategy.tell(first[1][0], "evaluated", value=0.8)  # a, second by similarity, scored best alone
    assert not strategy.waits_for_results()
    path = [strategy.ask() for _ in range(3)]
    # the greedy path starts from the best single (a; asked already, so not again), then c (scored
    # alone), then by similarity
    assert members_of(space, path) == [("a", "c"), ("a", "c", "d"), ("a", "b", "c", "d")]
    assert strategy.single_scores == {"c": 0.6, "a": 0.8}


def test_a_single_that_failed_ranks_after_those_scored_and_the_path_does_not_wait_for_it():
    space = data_only_space()
    strategy = make_strategy("tpe", space=space, index=RankedOrder("c", "a", "d", "b"), seed=0, budget=6,
                             study_name="singles-failed", singles=["c", "a"])
    (tc, _), (ta, _) = strategy.ask(), strategy.ask()
    strategy.tell(tc, "failed")
    strategy.tell(ta, "evaluated", value=0.5)
    path = [strategy.ask() for _ in range(2)]
    assert members_of(space, path) == [("a", "c"), ("a", "c", "d")]


def test_random_asks_the_singles_first_and_never_waits():
    space = data_only_space()
    strategy = make_strategy("random", space=space, seed=0, study_name="singles-random", singles=["d", "b"])
    first = [strategy.ask() for _ in range(3)]
    assert members_of(space, first[:2]) == [("d",), ("b",)] and not strategy.waits_for_results()
    assert first[2] is not None


def test_without_singles_tpe_never_waits(index):
    space = MixtureSpace(domains=NAMES, targets=("t",))
    strategy = make_strategy("tpe", space=space, index=index, seed=0, budget=20, study_name="no-singles")
    assert strategy.ask() is not None and not strategy.waits_for_results()
