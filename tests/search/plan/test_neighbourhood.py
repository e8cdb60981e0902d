"""A plan's neighbours estimated at once (search/plan/neighbourhood.py) against one partition at a
time: the same neighbours, the same estimates, the same new group evaluations, and a plan search
that picks, step by step, what enumerating every neighbour of every best plan would pick."""

from __future__ import annotations

import itertools
import random

import pytest

from search.plan.neighbourhood import KINDS, Neighbourhood
from search.plan.partition import make_partition, neighbours, spread
from search.plan.planner import PlanSearch


def families(n: int, seed: int):
    """``n`` domains in families of 2 to 4: sharing a body costs a point per stranger, distances
    follow the families with noise (a small copy of bench_planner_scale.synthetic)."""
    rng = random.Random(seed)
    domains = [f"d{i:02d}" for i in range(n)]
    family = {d: i // rng.randint(2, 4) for i, d in enumerate(domains)}
    singles = {d: rng.uniform(0.7, 0.9) for d in domains}
    distances = {(a, b): (0.1 if family[a] == family[b] else 0.5) + rng.uniform(0.0, 0.1)
                 for a, b in itertools.combinations(domains, 2)}

    def score(group):
        return {d: singles[d] + 0.005 - 0.01 * sum(family[e] != family[d] for e in group) for d in group}

    return domains, distances, singles, score


def random_partition(rng: random.Random, domains) -> tuple:
    shuffled = list(domains)
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(1, len(shuffled) - 1)))
    return make_partition(shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)]))


@pytest.mark.parametrize("seed", range(6))
def test_every_neighbour_estimated_at_once_is_its_estimate_one_partition_at_a_time(seed):
    rng = random.Random(seed)
    domains, distances, singles, score = families(9, seed)
    search = PlanSearch(domains=domains, distances=distances, singles=singles, score_group=score, budget=100)
    plan = random_partition(rng, domains)
    for partition in [random_partition(rng, domains) for _ in range(12)] + [plan]:
        for g in partition:
            if len(g) > 1 and g not in search.groups:  # scored the way a search scores them
                search.groups[g] = score(g)
                search._pair_loss.add(g, search.groups[g])
    hood = Neighbourhood(plan=plan, domains=search.domains, singles=singles,
                         group_terms=[sum(search.accuracies((g,)).values()) for g in plan])
    for g, acc in search.groups.items():
        hood.record(g, sum(acc.values()))
    change, new = hood._changes(search._pair_loss.matrix()), hood._new_groups()
    losses = search._pair_losses()
    first_move: dict = {}
    for flat in map(int, hood.valid.nonzero()[0]):
        p = hood.partition_at(flat)
        kind = KINDS[int((hood.bounds <= flat).sum()) - 1]
        first_move.setdefault(p, kind)
        assert search.value(plan) + change[flat] / hood.n == pytest.approx(search.estimate(p, losses), abs=1e-12)
        assert new[flat] == len(search._unscored(p)), (kind, p)
    assert first_move == {p: m for m, p in neighbours(plan)}  # every neighbour, each named by its first move


def enumerated_choice(search: PlanSearch):
    """What the planner chose before neighbourhoods: every untried neighbour of every best plan
    that the budget pays for, estimated one by one, ranked by (-gain, new groups, spread, partition, move)."""
    losses = search._pair_losses()
    base = {bodies: search.value(p) for bodies, p in search.best.items()}
    options = []
    for best in search.best.values():
        for move, p in neighbours(best):
            new = len(search._unscored(p))
            if p not in search.tried and new <= search.budget - search.evaluations:
                options.append((-(search.estimate(p, losses) - base.get(len(p), 0.0)), new, spread(search.distances, p),
                                p, move))
    return (min(options)[4], min(options)[3]) if options else None


@pytest.mark.parametrize("seed, floor", [(0, None), (1, None), (2, 0.01)])
def test_the_search_picks_at_every_step_what_enumerating_every_neighbour_picks(seed, floor):
    domains, distances, singles, score = families(10, seed)
    search = PlanSearch(domains=domains, distances=distances, singles=singles, score_group=score, budget=30,
                        max_domain_loss=floor)
    fast, compared = search._next_neighbour, []

    def checked():
        got = fast()
        if search._split_below_floor() is None:
            assert got == enumerated_choice(search)
            compared.append(got)
        return got

    search._next_neighbour = checked
    search.run(progress=lambda line: None)
    assert search.evaluations == 30 and len(compared) > 30  # the budget spent, free steps too
