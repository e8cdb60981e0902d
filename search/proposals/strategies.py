"""Search strategies: where the next proposal comes from.

A strategy proposes parameter dicts (:meth:`ask`) and hears back what became of each
(:meth:`tell`): ``evaluated`` with its accuracy, ``filtered`` by the pre-filter with how
far over the limit it was, ``stopped_early`` with its partial accuracy, or ``failed``.
Every strategy is in ``STRATEGIES``, found by one grep.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal, Sequence

from spaces.errors import SpecError
from spaces.fsd import rank_by_mean_fsd
from spaces.merge_dimensions import MERGE_METHOD_PARAM
from spaces.space import USE_PREFIX, MixtureSpace
from search.settings.choices import STRATEGY_NAMES, check_registry

if TYPE_CHECKING:
    import optuna

    from search.proposals.local_search import EliteMutation
    from spaces.fsd import SignIndex

logger = logging.getLogger(__name__)

Outcome = Literal["evaluated", "filtered", "stopped_early", "failed"]
CONSTRAINT_NAME = "sign_conflict"


class Strategy:
    """Base class: proposes ``(token, params)`` pairs and learns from their outcomes."""

    name = "base"

    def ask(self) -> tuple[int, dict] | None:
        """The next proposal as ``(token, params)``, or None when there is nothing left."""
        raise NotImplementedError

    def tell(self, token: int, outcome: Outcome, value: float | None = None, violation: float = 0.0) -> None:
        """What became of proposal ``token``."""

    def get_state(self) -> dict:
        """What a restored search needs to continue where this one was (see ``set_state``)."""
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def pending(self) -> dict[int, dict]:
        """Proposals asked for and not yet told about, by token (after a restore: lost ones)."""
        return {}

    def waits_for_results(self) -> bool:
        """Whether :meth:`ask` answered None because its next proposals depend on results not yet
        told (not because it has nothing left): the searcher asks again once a trial ends."""
        return False


class _ListStrategy(Strategy):
    """Proposes a fixed list of parameter dicts, in order (a list, not a generator, so
    that Ray Tune can pickle the searcher into its experiment state)."""

    def __init__(self, proposals: Iterable[dict]) -> None:
        self._proposals = list(proposals)
        self._next = 0

    def ask(self) -> tuple[int, dict] | None:
        if self._next >= len(self._proposals):
            return None
        self._next += 1
        return self._next - 1, self._proposals[self._next - 1]

    def get_state(self) -> dict:
        return {"next": self._next}

    def set_state(self, state: dict) -> None:
        self._next = state.get("next", self._next)


class Exhaustive(_ListStrategy):
    """Every subset (and ratio) that the space allows, smallest first."""

    name = "exhaustive"

    def __init__(self, *, space: MixtureSpace, **_: object) -> None:
        if space.merge.searched_weights:
            raise SpecError("exhaustive cannot enumerate a continuous space: search.weights is 'searched' "
                            "(one continuous weight per member); use strategy tpe or random, or weights: uniform")
        super().__init__(_distinct(space))


def _distinct(space: MixtureSpace) -> Iterator[dict]:
    """:meth:`MixtureSpace.enumerate` without the dicts that name a mixture already listed
    (operator choices that merge alike are one mixture: ``spaces/canonical.py``)."""
    seen: set[str] = set()
    for params in space.enumerate():
        key = space.to_mixture_spec(params).key
        if key not in seen:
            seen.add(key)
            yield params


# The operator choice that leaves one adapter as it is: the average of one member is that member,
# where TIES (the default first operator) would trim it to its largest entries.
AS_IT_IS = {MERGE_METHOD_PARAM: "average"}


def greedy_path(space: MixtureSpace, index: SignIndex) -> list[dict]:
    """Greedy Adapter Mixing (Alg. 1) for l = 1..N, as parameter dicts: the l adapters with the
    smallest mean FSD to all others (targets first when they must be members), unpruned (the
    space's first ratio), merged with the space's first operator (TIES by default; the paper
    averages: ``merge_methods: [average, ...]``). A path step of one adapter keeps it as it is
    when the space can average. The path stops at ``max_members``: a longer mixture is outside
    the space and would only be rejected."""
    ranked = rank_by_mean_fsd(index.row_means(), space.free_domains)
    start = 0 if space.require_targets else 1
    fixed = len(space.targets) if space.require_targets else 0
    stop = len(ranked) if space.max_members is None else max(start, min(len(ranked), space.max_members - fixed))
    alone = as_it_is(space)
    return [space.params_for(ranked[:n], merge=alone if fixed + n == 1 else None) for n in range(start, stop + 1)]


def as_it_is(space: MixtureSpace) -> dict | None:
    """The merge choice that leaves one adapter as it is (:data:`AS_IT_IS`), when the space has it;
    None (the space's first operator) when it has no average."""
    return AS_IT_IS if AS_IT_IS[MERGE_METHOD_PARAM] in space.merge.merge_methods else None


def single_params(space: MixtureSpace, domain: str) -> dict:
    """The parameter dict of ``domain``'s adapter alone, as it is (see :data:`AS_IT_IS`): with a
    refit head, what a user who picked that one adapter would get."""
    return space.params_for([domain], merge=as_it_is(space))


class SinglesOrder:
    """The greedy path's order once the adapters scored alone are told: the best score alone first
    (ties and unscored adapters keep the order they had, ``then``: a similarity or FSD order)."""

    def __init__(self, scores: dict[str, float | None], then: SignIndex) -> None:
        self.scores, self.then = dict(scores), then

    def row_means(self) -> dict[str, float]:
        """Smaller first, as the greedy path ranks: the rank of each domain in this order."""
        before = self.then.row_means()
        ranked = sorted(before, key=lambda d: (self.scores.get(d) is None, -(self.scores.get(d) or 0.0), before[d]))
        return {d: float(i) for i, d in enumerate(ranked)}


class GreedyFsd(_ListStrategy):
    """Greedy Adapter Mixing (:func:`greedy_path`), then nothing more."""

    name = "greedy_fsd"

    def __init__(self, *, space: MixtureSpace, index: SignIndex, **_: object) -> None:
        super().__init__(greedy_path(space, index))


class SoupAll(_ListStrategy):
    """The uniform average of every adapter (AdapterSoup over all domains), whatever operator
    comes first in the space: the soup is an average by definition."""

    name = "soup_all"

    def __init__(self, *, space: MixtureSpace, **_: object) -> None:
        if AS_IT_IS[MERGE_METHOD_PARAM] not in space.merge.merge_methods:
            raise SpecError(f"strategy soup_all is the uniform average of every adapter, but search.merge_methods "
                            f"is {list(space.merge.merge_methods)}: add average to it")
        super().__init__([space.params_for(space.free_domains, merge=AS_IT_IS)])


class OptunaStrategy(Strategy):
    """Proposals from an Optuna study (ask/tell). Filtered proposals are told as infeasible
    through ``Trial.set_constraint``: TPE ranks every infeasible trial below every
    feasible one, so it learns to avoid high-FSD regions; their placeholder value of 0.0
    is never used for ranking. Stopped-early proposals are told as pruned."""

    def __init__(self, *, space: MixtureSpace, sampler: optuna.samplers.BaseSampler,
                 study_name: str, storage: str | None = None, n_objectives: int = 1,
                 switch_after: int | None = None, seed: int = 0) -> None:
        import optuna

        from search.proposals.optuna_storage import study_storage  # optuna: on use (the config reads STRATEGIES)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.n_objectives = n_objectives
        self.study = optuna.create_study(study_name=study_name, storage=study_storage(storage), sampler=sampler,
                                         directions=["maximize"] * n_objectives, load_if_exists=True)
        self._trials: dict[int, optuna.Trial] = {}
        self.switch_after, self.seed = switch_after, seed
        self.local: EliteMutation | None = None  # proposes instead of the study past switch_after
        # Singles first (a data-only target): the adapters asked alone, first; the greedy path waits
        # for their scores to start from the best of them (see :meth:`start_with_singles`).
        self.singles: tuple[str, ...] = ()
        self.single_scores: dict[str, float | None] = {}  # told: accuracy (None: not evaluated)
        self._single_tokens: dict[int, str] = {}  # asked, not yet told
        self._path_after_singles: SignIndex | None = None

    def start_with_singles(self, singles: Sequence[str], path_order: SignIndex | None = None) -> None:
        """Ask each of ``singles`` alone first, in order; then, with ``path_order``, the greedy path
        (:func:`greedy_path`), which waits until every single is told and starts from the best of
        them (:class:`SinglesOrder`: their scores first, ``path_order`` among the rest)."""
        self.singles = tuple(singles)
        self.enqueue([single_params(self.space, d) for d in self.singles])
        self._path_after_singles = path_order

    def waits_for_results(self) -> bool:
        return (self._path_after_singles is not None and len(self._single_tokens) + len(self.single_scores)
                >= len(self.singles) and len(self.single_scores) < len(self.singles))

    def _walk_path_after_singles(self) -> None:
        """Once every single is told: enqueue the greedy path, best single first."""
        if self._path_after_singles is not None and len(self.single_scores) >= len(self.singles):
            order = SinglesOrder(self.single_scores, self._path_after_singles)
            self._path_after_singles = None
            logger.info("greedy path from the best single adapters: %s",
                        ", ".join(sorted(order.row_means(), key=order.row_means().get)))
            self.enqueue(greedy_path(self.space, order))

    def ask(self) -> tuple[int, dict] | None:
        if self.local is None and self.switch_after is not None and self._finished() >= self.switch_after:
            self.local = self._hand_over()
        if self.local is not None:
            return self.local.ask()
        self._walk_path_after_singles()
        if self.waits_for_results():
            return None  # every single asked, some still running: the path needs their scores
        # The space's distributions (one definition), then those that depend on what was
        # drawn: the chosen operator's parameters (all categorical).
        trial = self.study.ask(self.space.distributions())
        for name, dist in self.space.conditional_distributions(trial.params).items():
            trial.suggest_categorical(name, list(dist.choices))
        self._trials[trial.number] = trial
        single = self._single_of(trial.params)
        if single is not None:
            self._single_tokens[trial.number] = single
        # Exactly what the distributions sampled; ``to_mixture_spec`` gives the rest its default.
        return trial.number, dict(trial.params)

    def _single_of(self, params: dict) -> str | None:
        """The adapter of :attr:`singles` that ``params`` ask for alone, if it was not asked yet; else None.
        (The singles are enqueued first, so the first asks are theirs.)"""
        if len(self.single_scores) + len(self._single_tokens) >= len(self.singles):
            return None
        members = [d for d in self.space.free_domains if params.get(USE_PREFIX + d, False)]
        if len(members) != 1 or members[0] not in self.singles:
            return None
        return None if members[0] in self.single_scores or members[0] in self._single_tokens.values() else members[0]

    def _finished(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _hand_over(self) -> EliteMutation:
        """Past ``switch_after`` finished trials, mutations of the best mixtures propose
        (:mod:`search.proposals.local_search`): an ask costs the same at any length of the study, where
        TPE's and Optuna's grow with it. It starts from the study's best distinct feasible
        mixtures (by the first objective) and knows every mixture the study was asked. The
        study keeps what it holds; what follows is in MLflow."""
        from optuna.trial import TrialState

        from search.proposals.local_search import EliteMutation  # optuna: on use (the config reads STRATEGIES)

        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE
                and all(c <= 0 for c in t.constraints.values())
                and t.user_attrs.get("signmix.outcome") == "evaluated"]
        logger.info("%d Optuna trials: mutations of the best mixtures propose from now on", len(trials))
        return EliteMutation(space=self.space, elite=[(t.values[0], dict(t.params)) for t in done],
                             seen=[t.params for t in trials], seed=self.seed)

    def tell(self, token: int, outcome: Outcome, value: float | None = None, violation: float = 0.0) -> None:
        from optuna.trial import TrialState

        if self.local is not None and self.local.owns(token):
            self.local.tell(token, outcome, value)
            return
        if token in self._single_tokens:
            score = value[0] if isinstance(value, (list, tuple)) else value
            self.single_scores[self._single_tokens.pop(token)] = score if outcome == "evaluated" else None
        state, values, intermediate = self._result(outcome, value)
        # Feasible when <= 0: TPE ranks every infeasible trial below every feasible one.
        constraint = violation if outcome == "filtered" else 0.0
        trial = self._trials.pop(token, None)
        if trial is None:  # asked by a process that is gone, or told already
            running = {t.number: t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            if token in running:
                self._tell_lost(running[token], outcome, state, values, intermediate, constraint)
            return
        trial.set_constraint(CONSTRAINT_NAME, constraint)
        trial.set_user_attr("signmix.outcome", outcome)
        if intermediate is not None:
            trial.report(intermediate, step=0)
        self.study.tell(trial, values, state=state)

    def _result(self, outcome: Outcome, value) -> tuple:
        """``(state, values, intermediate value)`` that tell the study ``outcome``: values for
        evaluated (a list for several objectives) and filtered (a placeholder never ranked),
        a partial accuracy for stopped early (Optuna reports single objectives only)."""
        from optuna.trial import TrialState

        if outcome == "evaluated":
            return TrialState.COMPLETE, list(value) if isinstance(value, (list, tuple)) else [value], None
        if outcome == "filtered":
            return TrialState.COMPLETE, [0.0] * self.n_objectives, None
        if outcome == "stopped_early":
            return TrialState.PRUNED, None, value if self.n_objectives == 1 else None
        return TrialState.FAIL, None, None

    def _tell_lost(self, frozen, outcome: Outcome, state, values, intermediate, constraint: float) -> None:
        """Tell a trial asked by a process that is gone (a restored search), whose live
        ``optuna.Trial`` went with it: fail it, and add its parameters with the outcome as a
        new trial, which the sampler learns from like from any other."""
        import optuna
        from optuna.trial import TrialState

        self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
        self.study.add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, state=state, values=values,
            intermediate_values=None if intermediate is None else {0: intermediate},
            user_attrs={"signmix.outcome": outcome, "signmix.replaces": frozen.number},
            constraints={CONSTRAINT_NAME: constraint}))

    def enqueue(self, proposals: Iterable[dict]) -> None:
        """Ask these parameter dicts (from the space's ``params_for``) first, in order
        (Optuna's ``enqueue_trial``); the study learns from their results like from any
        other trial."""
        for params in proposals:
            # Only what ask samples (a single ratio, say, is not a parameter of the study).
            sampled = {**self.space.distributions(), **self.space.conditional_distributions(params)}
            self.study.enqueue_trial({k: v for k, v in params.items() if k in sampled}, skip_if_exists=True)

    def get_state(self) -> dict:
        return {"single_scores": dict(self.single_scores), "single_tokens": dict(self._single_tokens),
                "path_after_singles": self._path_after_singles}

    def set_state(self, state: dict) -> None:
        self.single_scores = dict(state.get("single_scores", self.single_scores))
        self._single_tokens = dict(state.get("single_tokens", self._single_tokens))
        self._path_after_singles = state.get("path_after_singles", self._path_after_singles)

    def pending(self) -> dict[int, dict]:
        from optuna.trial import TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return {t.number: dict(t.params) for t in running} | (self.local.pending() if self.local else {})


def _tpe(*, space: MixtureSpace, seed: int, budget: int, study_name: str, storage: str | None = None,
         n_objectives: int = 1, index: SignIndex | None = None, warm_start: str = "greedy_fsd",
         switch_after: int | None = None, singles: Sequence[str] = (), **_: object) -> OptunaStrategy:
    import optuna

    # Few random start-up trials for small budgets: TPE needs a handful to model from.
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                         n_startup_trials=min(10, max(3, budget // 4)))
    strategy = OptunaStrategy(space=space, sampler=sampler, study_name=study_name, storage=storage,
                              n_objectives=n_objectives, switch_after=switch_after, seed=seed)
    strategy.name = "tpe"
    walk = warm_start == "greedy_fsd" and index is not None
    if singles:
        # A data-only target: each of the nearest adapters alone first, then the greedy path from the
        # best of them (it waits for their scores).
        strategy.start_with_singles(singles, index if walk else None)
    elif walk:
        # The paper's greedy path first (N+1 mixtures of every size, least conflict first):
        # good mixtures early, and a spread of sizes for TPE to model from.
        strategy.enqueue(greedy_path(space, index))
    return strategy


def _random(*, space: MixtureSpace, seed: int, study_name: str, storage: str | None = None,
            n_objectives: int = 1, singles: Sequence[str] = (),
            **_: object) -> OptunaStrategy:
    import optuna

    strategy = OptunaStrategy(space=space, sampler=optuna.samplers.RandomSampler(seed=seed),
                              study_name=study_name, storage=storage, n_objectives=n_objectives)
    strategy.name = "random"
    if singles:
        strategy.start_with_singles(singles)
    return strategy


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "tpe": _tpe,
    "random": _random,
    "exhaustive": Exhaustive,
    "greedy_fsd": GreedyFsd,
    "soup_all": SoupAll,
}
check_registry("search.strategy", STRATEGY_NAMES, STRATEGIES)


def make_strategy(name: str, **kwargs: object) -> Strategy:
    """The strategy registered as ``name``, built with the keyword arguments it uses."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)
