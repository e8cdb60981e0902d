"""The Ray Tune searcher: strategy proposals behind the sign-conflict pre-filter.

``suggest`` is called by Ray Tune when a trial slot is free. It asks the strategy for
proposals until one deserves a trial: a proposal over ``max_fsd`` (or over
``max_members``) is told to the strategy as infeasible and recorded in MLflow as
``filtered``; a proposal that repeats an evaluated mixture is answered from the earlier
result. Neither ever occupies a trial slot.

The searcher owns the budget: it stops proposing once ``budget`` distinct mixtures are
evaluated (or in flight). Ray Tune snapshots its state together with the trials'
(:meth:`save`); after a crash, :meth:`restore` reloads that snapshot and reconciles it
with MLflow and the Optuna storage, which may be a few steps ahead of it.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from ray.tune.search import Searcher

from search.tracking.outcomes import METRIC, objective_value, trial_outcome
from spaces.spec import MixtureSpec

if TYPE_CHECKING:
    from search.proposals.fsd_gate import FsdGate
    from search.proposals.strategies import Strategy
    from search.tracking.tracker import SearchTracker
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace, Verdict

logger = logging.getLogger(__name__)

# Proposals in a row that start no trial (repeats, filtered) before the strategy is steered
# to an unseen mixture (strategies that can be: Optuna's, through enqueue_trial).
REPEATS_BEFORE_NOVELTY = 50
# How often a mixture whose trial failed before it started (its worker died while Ray Tune
# set it up, which Tune does not retry) is given a new trial before it counts as failed.
RETRIES_BEFORE_START = 2
# What :meth:`SignConflictSearcher.save` writes; the rest (space, index, strategy's
# storage, tracker) is rebuilt or durable elsewhere.
_STATE = ("counts", "results", "outcomes", "live", "waiting", "specs", "requeue", "retry", "retries", "batches",
          "exhausted")
# Lists that collect the searchers unpickled inside :func:`unpickled_searchers` blocks.
_COLLECTING: list[list] = []


@contextlib.contextmanager
def unpickled_searchers() -> Iterator[list[SignConflictSearcher]]:
    """The searchers unpickled inside the block, in order: around ``Tuner.restore``, the one
    Tune rebuilt from its experiment snapshot and will ask (Tune exposes no accessor for it)."""
    found: list = []
    _COLLECTING.append(found)
    try:
        yield found
    finally:
        _COLLECTING.remove(found)


@dataclass
class SearchCounts:
    proposals: int = 0
    filtered: int = 0  # proposals rejected by the pre-filter (repeats included)
    repeats: int = 0  # proposals answered from an earlier evaluation
    trials: int = 0
    evaluated: int = 0
    stopped_early: int = 0
    failed: int = 0
    filtered_keys: set = field(default_factory=set)
    prefilter_seconds: float = 0.0  # deciding on proposals (FSD, constraints, the gate), in the driver


class SignConflictSearcher(Searcher):
    """Turns strategy proposals into Ray Tune trials, filtering sign conflicts first."""

    def __init__(self, *, strategy: Strategy, space: MixtureSpace, index: SignIndex, budget: int,
                 tracker: SearchTracker | None = None, max_idle_proposals: int = 500,
                 objectives: Sequence[str] = (METRIC,), gate: FsdGate | None = None,
                 mixtures_per_trial: int = 1) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.gate = gate  # the FSD gate (search/proposals/fsd_gate.py); None: the space's own max_fsd only
        self.strategy, self.space, self.index, self.tracker = strategy, space, index, tracker
        self.objectives = tuple(objectives)  # metrics told to the strategy (several: multi-objective)
        self.budget, self.max_idle_proposals = budget, max_idle_proposals
        self.mixtures_per_trial = mixtures_per_trial  # >1: a trial evaluates a batch (suggest)
        self.counts = SearchCounts()
        self.results: dict[str, float] = {}  # mixture key -> accuracy of an evaluated mixture
        self.outcomes: dict[str, tuple[str, float | None]] = {}  # key -> (outcome, value), any ended trial
        self.live: dict[str, tuple[int, MixtureSpec]] = {}  # trial id -> (token, spec)
        self.waiting: dict[str, list[int]] = {}  # in-flight key -> tokens of repeated proposals
        self.specs: dict[str, MixtureSpec] = {}  # trial id -> spec, kept for callbacks
        self.requeue: list[tuple[int, dict]] = []  # proposals to run first (lost in a crash)
        self.started: set[str] = set()  # live trials that began (the callbacks say so)
        self.retry: list[tuple[int, MixtureSpec, float]] = []  # accepted, their trial never started
        self.retries: dict[str, int] = {}  # key -> trials that failed before starting
        self.batches: dict[str, list[str]] = {}  # live batch trial id -> its mixtures' sub-trial ids
        self.exhausted = False

    # Hooks: what is proposed, and whether it may run (the study overrides them).
    def _space_size(self) -> int:
        return self.space.size()

    def _propose(self) -> tuple[int, MixtureSpec] | None:
        for _ in range(self.max_idle_proposals):
            if self.requeue:
                token, params = self.requeue.pop(0)
            else:
                proposal = self.strategy.ask()
                if proposal is None:
                    return None
                token, params = proposal
            if not self.space.names_no_member(params):
                return token, self.space.to_mixture_spec(params)
            # No member at all (a data-only target's search): no mixture. The sampler learns it
            # as infeasible, like a filtered proposal at the worst conflict, and is asked again.
            self.strategy.tell(token, "filtered", violation=1.0)
            logger.info("proposal %d left every adapter out: asked again", token)
        return None

    def _verdict(self, spec: MixtureSpec) -> Verdict:
        verdict = self.space.check(spec, self.index)
        # One adapter alone has no sign conflict to avoid (its FSD is 0 by definition): the gate
        # never filters it, whatever threshold the evidence fits (a data-only target's singles).
        return verdict if self.gate is None or spec.k == 1 else self.gate.check(verdict, spec.members)

    def _unseen_params(self) -> dict | None:
        """A mixture of the space that was never proposed to a trial nor filtered, drawn at
        random (seeded by the proposal count, so a restored search draws the same); None
        when there is none (or none was found in a large space)."""
        seen = set(self.outcomes) | self.counts.filtered_keys | set(self.waiting)
        rng = random.Random(self.counts.proposals)
        # Random draws first: a few key computations while most of the space is unseen, where
        # listing the space costs one per mixture (1.6 s for 32,768); the list once draws fail.
        for _ in range(100 if self._space_size() <= 50_000 else 1000):
            params = self.space.random_params(rng)
            if self.space.to_mixture_spec(params).key not in seen:
                return params
        if self._space_size() <= 50_000:
            unseen = [p for p in self.space.enumerate() if self.space.to_mixture_spec(p).key not in seen]
            return rng.choice(unseen) if unseen else None
        return None

    def suggest(self, trial_id: str):
        """The next trial's config: one mixture (``spec``, ``fsd``, ``mixture_key``), or with
        ``mixtures_per_trial`` > 1 a ``batch`` of up to that many, evaluated one after the
        other by one trial. Each mixture of a batch is its own sub-trial ``<trial id>#<i>``
        here: the budget, the strategy's tells and the retries count mixtures, not trials."""
        subs, configs = [], []
        for i in range(self.mixtures_per_trial):
            picked = self._next_mixture()
            if picked is None:
                break
            subs.append(trial_id if self.mixtures_per_trial == 1 else f"{trial_id}#{i}")
            configs.append(self._start(subs[-1], *picked))
        if not configs:
            return None if self.live else Searcher.FINISHED
        if self.mixtures_per_trial == 1:
            return configs[0]
        self.batches[trial_id] = subs
        return {"batch": configs}

    def _next_mixture(self) -> tuple[int, MixtureSpec, float] | None:
        """(token, spec, fsd) of the next mixture to run, or None (none may run now, or the
        strategy ran out: then ``exhausted``)."""
        if self.retry:  # already counted in the budget, and proposed before the strategy ran out
            return self.retry.pop(0)
        if self.exhausted or len(self.results) + len(self.live) >= self.budget:
            return None
        if self.gate is not None and hasattr(self.strategy, "enqueue"):
            # The gate decides only once it has seen a few mixtures of every size: have the
            # strategy propose unseen ones of the sizes it still lacks.
            seen = set(self.outcomes) | self.counts.filtered_keys | set(self.waiting)
            asks = self.gate.exploration(self.space, seen, random.Random(self.counts.proposals))
            if asks:
                self.strategy.enqueue(asks)
        for idle in range(self.max_idle_proposals):
            if len(self.outcomes) + len(self.counts.filtered_keys) >= self._space_size():
                break  # every mixture of the space has been evaluated or filtered
            if idle and idle % REPEATS_BEFORE_NOVELTY == 0 and hasattr(self.strategy, "enqueue"):
                # The strategy keeps proposing what it has seen (TPE does, late in a small
                # space): have it ask an unseen mixture next, and learn from its result.
                params = self._unseen_params()
                if params is None:
                    break
                self.strategy.enqueue([params])
            proposal = self._propose()
            if proposal is None:
                break
            token, spec = proposal
            self.counts.proposals += 1
            t0 = time.perf_counter()
            verdict = self._verdict(spec)
            self.counts.prefilter_seconds += time.perf_counter() - t0
            if not verdict.accepted:
                self.counts.filtered += 1
                self.counts.filtered_keys.add(spec.key)
                self.strategy.tell(token, "filtered", violation=verdict.violation)
                if self.tracker is not None:
                    self.tracker.record_filtered(spec, verdict.fsd, verdict.reason)
                logger.info("filtered %s: %s", spec.label(), verdict.reason)
                continue
            if spec.key in self.outcomes:
                self.counts.repeats += 1
                self.strategy.tell(token, *self.outcomes[spec.key])
                continue
            if spec.key in self.waiting:
                self.counts.repeats += 1
                self.waiting[spec.key].append(token)
                continue
            self.waiting[spec.key] = []
            return token, spec, verdict.fsd
        # A strategy that waits for results of trials still running (the greedy path after a
        # data-only target's singles) is asked again when one ends; otherwise it ran out.
        if not (self.live and getattr(self.strategy, "waits_for_results", lambda: False)()):
            self.exhausted = True
        return None

    def _start(self, trial_id: str, token: int, spec: MixtureSpec, fsd: float) -> dict:
        self.live[trial_id] = (token, spec)
        self.specs[trial_id] = spec
        self.counts.trials += 1
        return {"spec": spec.to_dict(), "fsd": fsd, "mixture_key": spec.key}

    def mixtures_of(self, trial_id: str) -> list[tuple[str, MixtureSpec]]:
        """(sub-trial id, spec) of each mixture of a trial, in batch order (one: the trial itself)."""
        subs = self.batches.get(trial_id, [trial_id])
        return [(sub, self.specs[sub]) for sub in subs if sub in self.specs]

    def trial_started(self, trial_id: str) -> None:
        """The trial began on its worker (from the callbacks' ``on_trial_start``)."""
        for sub in self.batches.get(trial_id, [trial_id]):
            if sub in self.live:
                self.started.add(sub)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A batch reports each mixture as it is evaluated (``batch_index``): that mixture is done."""
        if trial_id in self.batches and "batch_index" in result:
            self._complete(self.batches[trial_id][int(result["batch_index"])], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.batches:
            self._complete(trial_id, result, error)
            return
        # The mixtures of the batch that reported are done; the rest fail with the trial (or,
        # if it never started, run again), and did not report a result of their own.
        for sub in self.batches[trial_id]:  # kept: the callbacks read the batch after this
            if sub in self.live:
                self._complete(sub, None, error=True)

    def _complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        token, spec = self.live.pop(trial_id, (None, None))
        began = trial_id in self.started
        self.started.discard(trial_id)
        if spec is None:
            return
        if error and not began and self.retries.get(spec.key, 0) < RETRIES_BEFORE_START:
            # Its worker died before the mixture started (Ray Tune fails a trial whose reused
            # worker dies while being reset, without retrying it): nothing was evaluated, so
            # the mixture gets a new trial, first, and keeps its place and its waiting repeats.
            self.retries[spec.key] = self.retries.get(spec.key, 0) + 1
            self.retry.append((token, spec, self._verdict(spec).fsd))
            logger.warning("the trial of %s failed before it started; it is run again", spec.label())
            return
        tokens = [token] + self.waiting.pop(spec.key, [])
        if spec.key in self.results:
            # Re-run after a restore of a trial that had already finished: already counted,
            # and told with what it was told before (every objective).
            outcome, value = self.outcomes[spec.key]
        else:
            outcome, value = trial_outcome(result, error=error, objectives=self.objectives)
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        if outcome == "evaluated" and spec.key not in self.results:
            self.results[spec.key] = result[METRIC]
            if self.gate is not None:
                self.gate.observe(spec.key, spec.members, result[METRIC], self.index)
        self.outcomes[spec.key] = (outcome, value)
        for t in tokens:
            self.strategy.tell(t, outcome, value=value)

    def __setstate__(self, state: dict) -> None:
        state = {"mixtures_per_trial": 1, "batches": {}, **state}  # a snapshot from before batches
        self.__dict__.update(state)
        self.started = set()  # unpickled by a resumed search: none of its trials has begun yet
        for found in _COLLECTING:
            found.append(self)

    # Ray Tune calls these with its experiment snapshots -----------------------------
    def save(self, checkpoint_path: str) -> None:
        state = {name: getattr(self, name) for name in _STATE}
        state["strategy"] = self.strategy.get_state()
        state["gate"] = None if self.gate is None else self.gate.get_state()
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        self.strategy.set_state(state.pop("strategy"))
        gate_state = state.pop("gate", None)
        if self.gate is not None and gate_state is not None:
            self.gate.set_state(gate_state)
        for name, value in state.items():
            setattr(self, name, value)
        self.exhausted = False
        self._reconcile()

    def _reconcile(self) -> None:
        """Bring the snapshot up to date with what happened after it was taken."""
        if self.tracker is not None:
            for key, (status, metrics, members) in self.tracker.reload().items():
                if status == "filtered":
                    self.counts.filtered_keys.add(key)
                elif status in ("evaluated", "failed", "stopped_early") and key not in self.outcomes:
                    # As on_trial_complete would have told it: every objective, from MLflow.
                    self.outcomes[key] = (status, objective_value(metrics, self.objectives))
                    if status == "evaluated":
                        self.results[key] = metrics[METRIC]
                        self.counts.evaluated += 1
                        if self.gate is not None:  # the gate's evidence includes it, as before the crash
                            self.gate.observe(key, members, metrics[METRIC], self.index)
                    else:
                        setattr(self.counts, status, getattr(self.counts, status) + 1)
        # Proposals the strategy made after the snapshot: run them first, same token.
        known = {token for token, _ in self.live.values()} | {t for ts in self.waiting.values() for t in ts}
        known |= {token for token, _ in self.requeue} | {token for token, _, _ in self.retry}
        for token, params in self.strategy.pending().items():
            if token not in known:
                self.requeue.append((token, params))
