"""The search over partitions: agglomerative start, then moves, within a budget of group evaluations.

A group's accuracy does not depend on the other groups, so each group is scored once
(``score_group``, which searches the group's body) and cached; a plan's value is the mean
accuracy over every domain of its groups. A group of one domain is that domain's own
adapter: its accuracies are given (``singles``) and cost no evaluation, so the plan with
one group per domain (G = N) is the bound by construction.

1. The agglomerative clustering on the distances gives one partition per G, from N down to
   1 (N - 1 group evaluations: each level merges two groups into one new group).
2. Local search, best first: among the untried neighbours of every best plan so far
   (:func:`search.plan.partition.neighbours`: move one domain, swap two, split, merge),
   score the one expected to gain most over the best plan of its own number of bodies:
   what each pair of domains cost each other in the groups scored so far predicts a new
   group (:meth:`PlanSearch.estimate`); among equals the fewest new group evaluations,
   then the most compact by the distances (:func:`search.plan.partition.spread`). A neighbour that
   beats the best plan of its own G replaces it. Neighbours whose groups are all scored
   cost nothing; one the remaining budget cannot pay for is passed over (and comes back if
   other steps score its groups); the search stops when no best plan has an untried neighbour
   that the remaining budget of group evaluations can pay for. Every neighbour of a best plan
   is estimated at once from the one or two groups it changes
   (:class:`search.plan.neighbourhood.Neighbourhood`), so a step costs about N^2 array cells
   per best plan rather than N^2 partitions built and summed.
3. Batches (``batch`` > 1): the start's levels, and the search's next plans, are proposed
   until their new groups number ``batch``, and those groups are scored together (``score_groups``: a plan's group
   searches as concurrent Ray tasks, ``search/plan/bodies.py``); the plans of a batch are then
   taken in order as one after another would be. What is proposed depends on ``batch`` only,
   never on how many of its groups run at once, so a plan is the same on one machine or many.
4. The floor (``max_domain_loss``: the most any one domain may lose against its own adapter) is a
   constraint of the search, not a filter afterwards: a plan that keeps every domain within it
   beats one that does not, whatever their means (:meth:`PlanSearch.rank`), and while the best
   plan of some G has a domain below its floor, the next plan scored is that plan with its worst
   domain split off to its own adapter (the ``split`` move), before any other neighbour.

Pure: ``score_group`` is a plain callable, so this runs on numbers in tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from search.plan.neighbourhood import Neighbourhood, PairLosses
from search.plan.partition import Distances, Group, Partition, agglomerative, make_partition, spread
from search.plan.serving_choice import within_floor, worst_domain

logger = logging.getLogger(__name__)

ScoreGroup = Callable[[Group], Mapping[str, float]]
ScoreGroups = Callable[[Sequence[Group]], Sequence[Mapping[str, float]]]
IMPROVEMENT = 1e-12  # a neighbour must beat the best plan of its G by more than rounding


@dataclass(frozen=True)
class PlanStep:
    """One plan the search scored: how it was reached and its mean validation accuracy."""

    move: str  # "agglomerative" | one of search.plan.partition.MOVES
    partition: Partition
    accuracy: float
    new_groups: int  # group evaluations it cost
    improved: bool  # it became the best plan of its number of bodies


@dataclass
class PlanSearch:
    """The state of one plan search; :meth:`run` fills :attr:`best` and :attr:`steps`.

    Args:
        domains: the domains to serve (at least 2).
        distances: pairwise distances between them (smaller: more likely to share a body).
        singles: each domain's accuracy with its own adapter (a group of one).
        score_group: a group of two or more -> each member's accuracy with the group's body.
        budget: how many groups of two or more may be scored (group evaluations).
        max_domain_loss: the floor, the most one domain may lose against ``singles`` (None: none).
        batch: plans proposed at once (their new groups scored together).
        score_groups: several groups at once, each member's accuracy per group, in order
            (default: ``score_group`` on each, one after another).
    """

    domains: Sequence[str]
    distances: Distances
    singles: Mapping[str, float]
    score_group: ScoreGroup
    budget: int
    max_domain_loss: float | None = None
    batch: int = 1
    score_groups: ScoreGroups | None = None
    groups: dict[Group, dict[str, float]] = field(default_factory=dict)  # scored groups (the cache)
    best: dict[int, Partition] = field(default_factory=dict)  # G -> best partition found
    steps: list[PlanStep] = field(default_factory=list)
    tried: set[Partition] = field(default_factory=set)
    # kept between steps of the local search (:meth:`_next_neighbour`)
    _hoods: dict[int, Neighbourhood] = field(default_factory=dict, repr=False)  # G -> the best plan's neighbours
    _tops: dict[int, tuple | None] = field(default_factory=dict, repr=False)  # G -> its first untried one
    _pair_loss: PairLosses | None = field(default=None, repr=False)
    _losses: object = field(default=None, repr=False)  # the pair-loss matrix while no new group is scored
    _loss_pairs: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)  # the same, by pair
    _terms: dict[Group, tuple[float, ...]] = field(default_factory=dict, repr=False)
    _spreads: dict[Partition, float] = field(default_factory=dict, repr=False)
    _estimates: dict[Partition, float] = field(default_factory=dict, repr=False)  # while no new group is scored
    _values: dict[Partition, float] = field(default_factory=dict, repr=False)  # a scored plan's never changes
    _worst: dict[Partition, tuple[str, float]] = field(default_factory=dict, repr=False)  # nor its worst domain
    _within_floor: dict[Partition, bool] = field(default_factory=dict, repr=False)
    _splits: dict[Partition, Partition] = field(default_factory=dict, repr=False)  # a plan -> its worst split off
    _pending: int = field(default=0, repr=False)  # new groups of the batch being proposed (budget they hold)

    def __post_init__(self) -> None:
        if len(set(self.domains)) < 2:
            raise ValueError(f"a plan needs at least 2 domains, got {list(self.domains)}")
        missing = [d for d in self.domains if d not in self.singles]
        if missing:
            raise ValueError(f"singles lacks the own-adapter accuracy of {missing}")
        if self.budget < 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        self.domains = tuple(sorted(self.domains))
        self._pair_loss = PairLosses(self.domains, self.singles)

    @property
    def evaluations(self) -> int:
        """Group evaluations spent (groups of two or more scored)."""
        return len(self.groups)

    def _unscored(self, partition: Partition) -> list[Group]:
        return [g for g in partition if len(g) > 1 and g not in self.groups]

    def accuracies(self, partition: Partition) -> dict[str, float]:
        """Each domain's accuracy under ``partition`` (its groups must be scored already)."""
        out: dict[str, float] = {}
        for g in partition:
            out.update({g[0]: float(self.singles[g[0]])} if len(g) == 1 else self.groups[g])
        return out

    def value(self, partition: Partition) -> float:
        """Mean accuracy over the domains (every group scored already)."""
        found = self._values.get(partition)
        if found is None:
            acc = self.accuracies(partition)
            found = self._values[partition] = sum(acc[d] for d in self.domains) / len(self.domains)
        return found

    def worst(self, partition: Partition) -> tuple[str, float]:
        """The domain of ``partition`` that loses most against its own adapter, and its loss."""
        found = self._worst.get(partition)
        if found is None:
            found = self._worst[partition] = worst_domain(self.accuracies(partition), self.singles)
        return found

    def within_floor(self, partition: Partition) -> bool:
        """Whether no domain of ``partition`` loses more than ``max_domain_loss``."""
        found = self._within_floor.get(partition)
        if found is None:
            found = self._within_floor[partition] = within_floor(self.accuracies(partition), self.singles,
                                                                 self.max_domain_loss)
        return found

    def rank(self, partition: Partition) -> tuple[bool, float]:
        """How plans of one G compare: within the floor first, then the mean accuracy."""
        return self.within_floor(partition), self.value(partition)

    def _better(self, partition: Partition, than: Partition) -> bool:
        (floor, value), (floor_then, value_then) = self.rank(partition), self.rank(than)
        return floor > floor_then or (floor == floor_then and value > value_then + IMPROVEMENT)

    def _remaining(self) -> int:
        """Group evaluations the budget can still pay for, less those the batch being proposed holds."""
        return self.budget - self.evaluations - self._pending

    def _evaluate(self, groups: Sequence[Group]) -> None:
        """Score ``groups`` (new, distinct) at once, and learn their pair losses."""
        if len(groups) > 1 and self.score_groups is not None:
            results = list(self.score_groups(groups))
        else:
            results = [self.score_group(g) for g in groups]
        for g, scored in zip(groups, results, strict=True):
            scored = dict(scored)
            missing = [d for d in g if d not in scored]
            if missing:
                raise ValueError(f"score_group({g}) gave no accuracy for {missing}")
            self.groups[g] = {d: float(scored[d]) for d in g}
            self._pair_loss.add(g, self.groups[g])
            self._losses = None
            for hood in self._hoods.values():
                hood.record(g, sum(self.groups[g].values()))

    def _score_all(self, proposals: Sequence[tuple[str, Partition]]) -> list[PlanStep | None]:
        """Score several plans: the new groups of all of them at once, then each plan in order, as
        one after another would (a new group counts for the first plan that needs it). A plan whose
        new groups the budget cannot pay for, after those before it, gets None."""
        needed: list[Group] = []
        new_of: list[list[Group] | None] = []
        for _, partition in proposals:
            new = [g for g in self._unscored(partition) if g not in needed]
            if len(needed) + len(new) > self.budget - self.evaluations:
                new_of.append(None)
                continue
            needed += new
            new_of.append(new)
        self._evaluate(needed)
        steps: list[PlanStep | None] = []
        for (move, partition), new in zip(proposals, new_of):
            if new is None:
                steps.append(None)
                continue
            self.tried.add(partition)
            value = self.value(partition)
            bodies = len(partition)
            improved = bodies not in self.best or self._better(partition, self.best[bodies])
            if improved:
                self.best[bodies] = partition
            self.steps.append(PlanStep(move=move, partition=partition, accuracy=value, new_groups=len(new),
                                       improved=improved))
            steps.append(self.steps[-1])
        return steps

    def run(self, progress: Callable[[str], None] = logger.info) -> PlanSearch:
        """Agglomerative start, then local search, until the budget is spent; returns self."""
        levels = list(agglomerative(self.domains, self.distances))
        while levels:
            chunk = self._fill(levels)
            levels = levels[len(chunk):]
            for partition, step in zip(chunk, self._score_all([("agglomerative", p) for p in chunk])):
                if step is None:
                    progress(f"plan: the budget of {self.budget} group evaluations ended the agglomerative start "
                             f"at {len(partition) + 1} bodies")
                    return self
                name, loss = self.worst(partition)
                progress(f"plan: {len(partition)} bodies (agglomerative) {step.accuracy:.4f} (worst domain "
                         f"{name} {-100 * loss:+.1f} points), {self.evaluations}/{self.budget} group evaluations")
        while True:  # ends: every pass scores or discards one more untried neighbour
            proposals = self._propose()
            if not proposals:
                return self
            for (move, partition), step in zip(proposals, self._score_all(proposals)):
                if step is None:  # the budget cannot pay for it
                    self.tried.add(partition)
                elif step.improved:
                    name, loss = self.worst(partition)
                    progress(f"plan: {len(partition)} bodies improved by a {move} to {step.accuracy:.4f} (worst "
                             f"domain {name} {-100 * loss:+.1f} points), {self.evaluations}/{self.budget} group "
                             "evaluations")

    def _fill(self, levels: Sequence[Partition]) -> list[Partition]:
        """The first of ``levels`` up to the one whose new groups bring the batch to ``batch``."""
        chunk: list[Partition] = []
        pending: set[Group] = set()
        for partition in levels:
            new = set(self._unscored(partition)) - pending
            if chunk and pending and len(pending) + len(new) > self.batch:
                break
            chunk.append(partition)
            pending |= new
            if len(pending) >= self.batch:
                break
        return chunk

    def _propose(self) -> list[tuple[str, Partition]]:
        """The next plans to score: the first untried neighbour (:meth:`_next_neighbour`), then
        the next, each taken as tried, until their new groups reach ``batch``, as long as the budget
        left after the new groups before it can pay for each. A plan that needs no new group is
        free: alone when it comes first (as one at a time would score it), else beside the rest."""
        proposals: list[tuple[str, Partition]] = []
        pending: set[Group] = set()
        try:
            while len(pending) < self.batch:
                step = self._next_neighbour()
                if step is None:
                    break
                new = set(self._unscored(step[1])) - pending
                if proposals and (len(new) > self._remaining() or len(pending) + len(new) > self.batch):
                    break  # left untried: it comes first in the next batch, if the budget allows
                proposals.append(step)
                if not new and len(proposals) == 1:
                    break
                if self.batch > 1:
                    self.tried.add(step[1])
                pending |= new
                self._pending = len(pending)
        finally:
            self._pending = 0
        return proposals

    def _split_below_floor(self) -> Partition | None:
        """The best plan of the fewest bodies that has a domain below its floor, with that domain
        split off to its own adapter, when that plan is untried and the budget can pay for it."""
        if self.max_domain_loss is None:
            return None
        for bodies in sorted(self.best):
            best = self.best[bodies]
            if self.within_floor(best):
                continue
            p = self._splits.get(best)
            if p is None:
                name, _ = self.worst(best)
                rest = [tuple(d for d in g if d != name) for g in best]
                p = self._splits[best] = make_partition([g for g in rest if g] + [(name,)])
            if p not in self.tried and len(self._unscored(p)) <= self._remaining():
                return p
        return None

    def _pair_losses(self) -> dict[tuple[str, str], float]:
        """What sharing a body with ``e`` cost ``d``, as seen so far: ``d``'s own accuracy minus
        its accuracy, averaged over the scored groups that hold both (ordered pairs)."""
        seen: dict[tuple[str, str], list[float]] = {}
        for g, acc in self.groups.items():
            for d in g:
                for e in g:
                    if d != e:
                        seen.setdefault((d, e), []).append(self.singles[d] - acc[d])
        return {pair: sum(v) / len(v) for pair, v in seen.items()}

    def estimate(self, partition: Partition, losses: Mapping[tuple[str, str], float] | None = None,
                 terms: dict[Group, tuple[float, ...]] | None = None) -> float:
        """The mean accuracy ``partition`` is expected to reach: exact for scored groups; for a
        new group, each member's own accuracy minus its mean pair loss with the others
        (:meth:`_pair_losses`; a pair not seen yet counts the mean of the pairs seen).

        ``terms``: a cache of each group's terms under ``losses`` (the caller keeps it while the
        scored groups do not change); the sum runs over the same terms in the same order either way."""
        losses = self._pair_losses() if losses is None else losses
        terms = {} if terms is None else terms
        unknown = sum(losses.values()) / len(losses) if losses else 0.0
        total = 0.0
        for g in partition:
            found = terms.get(g)
            if found is None:
                if len(g) == 1 or g in self.groups:
                    found = (sum(self.accuracies((g,)).values()),)
                else:
                    found = tuple(self.singles[d] - sum(pair) / len(pair)
                                  for d in g for pair in ([losses.get((d, e), unknown) for e in g if e != d],))
                terms[g] = found
            for term in found:
                total += term
        return total / len(self.domains)

    def _next_neighbour(self) -> tuple[str, Partition] | None:
        """Among the untried neighbours of every best plan that the remaining budget can pay for,
        the one expected to gain most over the best plan of its own number of bodies
        (:meth:`estimate`); among equals the one needing the fewest new group evaluations, then
        the most compact. None when none is left.

        Each best plan's neighbours are estimated at once from what they change
        (:class:`search.plan.neighbourhood.Neighbourhood`); the few within rounding of its best are
        ranked again on their partitions, by :meth:`estimate` as above. Each plan's first neighbour
        is kept until a new group is scored, the best plan of its number of bodies or of the one
        its splits or merges reach changes, or it is tried."""
        split = self._split_below_floor()
        if split is not None:
            return "split", split
        if self._losses is None:  # new groups: new pair losses, every estimate again
            self._losses, self._loss_pairs = self._pair_loss.matrix(), self._pair_losses()
            self._tops, self._terms, self._estimates = {}, {}, {}
        for bodies, best in self.best.items():
            hood = self._hoods.get(bodies)
            if hood is None or hood.plan != best:
                hood = self._hoods[bodies] = Neighbourhood(
                    plan=best, domains=self.domains, singles=self.singles,
                    group_terms=[sum(self.accuracies((g,)).values()) for g in best])
                for g, acc in self.groups.items():
                    hood.record(g, sum(acc.values()))
                for near in (bodies - 1, bodies, bodies + 1):  # their splits or merges compare with it
                    self._tops.pop(near, None)
        remaining = self._remaining()
        base = {bodies: self.value(p) for bodies, p in self.best.items()}
        while True:
            for bodies, hood in self._hoods.items():
                if bodies not in self._tops:
                    self._tops[bodies] = self._first(hood, base, remaining)
            found = [(top, bodies) for bodies, top in self._tops.items() if top is not None]
            if not found:
                return None
            top, bodies = min(found)
            *_, partition, move, flat = top
            if partition in self.tried:  # tried since (reached from another plan): never again
                self._hoods[bodies].block(flat)
                del self._tops[bodies]
                continue
            return move, partition

    def _first(self, hood: Neighbourhood, base: Mapping[int, float], remaining: int) -> tuple | None:
        """The neighbour of ``hood``'s plan the search ranks first, as (-gain, new groups, spread,
        partition, move, cell); the spread only where the first two tie. None when none is left."""
        value = base[len(hood.plan)]
        offsets = {"split": value - base.get(len(hood.plan) + 1, 0.0), "merge": value - base.get(len(hood.plan) - 1, 0.0)}
        near = hood.best(losses=self._losses, version=len(self.groups), offsets=offsets, remaining=remaining)
        if not near:
            return None
        options = [(-(self._estimate(c.partition) - base.get(len(c.partition), 0.0)),
                    c.new_groups, c.partition, c.move, c.flat) for c in near]
        first = min(o[:2] for o in options)
        return min((*o[:2], self._spread(o[2]), *o[2:]) for o in options if o[:2] == first)

    def _estimate(self, partition: Partition) -> float:
        if partition not in self._estimates:
            self._estimates[partition] = self.estimate(partition, self._loss_pairs, self._terms)
        return self._estimates[partition]

    def _spread(self, partition: Partition) -> float:
        if partition not in self._spreads:
            self._spreads[partition] = spread(self.distances, partition)
        return self._spreads[partition]
