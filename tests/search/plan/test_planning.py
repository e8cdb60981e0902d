"""The pure planning logic: partitions, the agglomerative start, moves, the local search,
the front, the chosen plan and the plan's interval, on numbers (no models, no Ray)."""

from __future__ import annotations

import itertools

import pytest

from search.plan.compatibility import cross_head_distances, fsd_distances
from search.plan.front import choose_plan, front_points, mean_accuracy_interval
from search.plan.partition import agglomerative, make_partition, neighbours, spread
from search.plan.planner import PlanSearch

# Two families: reviews (a, b, c) share well, tasks (x, y) share with each other only.
FAMILY = {"a": "review", "b": "review", "c": "review", "x": "task", "y": "task"}
DOMAINS = sorted(FAMILY)
DIST = {(p, q): (0.1 if FAMILY[p] == FAMILY[q] else 0.9) for p, q in itertools.combinations(DOMAINS, 2)}
OWN = {d: 0.80 for d in DOMAINS}


def family_score(group):
    """A body serves a group of one family at its own adapters' level (+1 point for sharing),
    and costs every member 20 points when families mix."""
    one_family = len({FAMILY[d] for d in group}) == 1
    return {d: OWN[d] + (0.01 if one_family else -0.20) for d in group}


def test_make_partition_is_canonical_and_refuses_overlaps():
    assert make_partition([["b", "a"], ["x"]]) == make_partition([["x"], ["a", "b"]]) == (("a", "b"), ("x",))
    with pytest.raises(ValueError, match="one group only"):
        make_partition([["a", "b"], ["b"]])
    with pytest.raises(ValueError, match="non-empty"):
        make_partition([["a"], []])


def test_agglomerative_merges_the_closest_groups_first_down_to_one_body():
    levels = agglomerative(DOMAINS, DIST)
    assert [len(p) for p in levels] == [5, 4, 3, 2, 1]
    assert levels[0] == tuple((d,) for d in DOMAINS)
    assert levels[3] == (("a", "b", "c"), ("x", "y"))  # the two families
    assert levels[4] == (tuple(DOMAINS),)


def test_neighbours_are_every_move_split_swap_and_merge_once():
    p = make_partition([["a", "b"], ["x"]])
    got = list(neighbours(p))
    parts = [q for _, q in got]
    assert len(parts) == len(set(parts)) and p not in parts
    moves = {q: m for m, q in got}
    assert moves[make_partition([["a"], ["b", "x"]])] == "move"
    assert moves[make_partition([["a"], ["b"], ["x"]])] == "split"
    assert moves[make_partition([["a", "b", "x"]])] == "merge"
    assert {len(q) for q in parts} == {1, 2, 3}
    # a swap that no single move reaches
    assert dict((q, m) for m, q in neighbours(make_partition([["a", "b"], ["x", "y"]])))[
        make_partition([["a", "y"], ["b", "x"]])] == "swap"


def test_spread_is_zero_for_singletons_and_grows_with_mixed_families():
    assert spread(DIST, tuple((d,) for d in DOMAINS)) == 0.0
    assert spread(DIST, make_partition([["a", "b", "c"], ["x", "y"]])) < spread(
        DIST, make_partition([["a", "b", "x"], ["c", "y"]]))


def test_the_plan_search_finds_the_families_from_a_misleading_start_within_its_budget():
    # Distances that point the wrong way: the clustering starts by pairing across families.
    wrong = {(p, q): (0.9 if FAMILY[p] == FAMILY[q] else 0.1) for p, q in itertools.combinations(DOMAINS, 2)}
    calls = []

    def score(group):
        calls.append(group)
        return family_score(group)

    search = PlanSearch(domains=DOMAINS, distances=wrong, singles=OWN, score_group=score, budget=20).run()
    assert search.best[2] == (("a", "b", "c"), ("x", "y"))  # found by moves, not by the start
    assert search.value(search.best[2]) == pytest.approx(0.81)
    assert search.value(search.best[5]) == pytest.approx(0.80)  # G = N: the own adapters, the bound
    assert len(calls) == len(set(calls)) == search.evaluations <= 20  # each group scored once
    assert any(s.move != "agglomerative" and s.improved for s in search.steps)


def test_the_plan_search_stops_at_its_budget_and_reuses_scored_groups():
    calls = []

    def score(group):
        calls.append(group)
        return family_score(group)

    search = PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=score, budget=6).run()
    assert search.evaluations == len(calls) == 6
    assert search.best[2] == (("a", "b", "c"), ("x", "y"))  # the right start needs no move
    starved = PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=family_score, budget=2).run()
    assert sorted(starved.best) == [3, 4, 5] and starved.evaluations == 2


def test_a_batch_scores_its_new_groups_together_within_the_budget_and_finds_the_families():
    wrong = {(p, q): (0.9 if FAMILY[p] == FAMILY[q] else 0.1) for p, q in itertools.combinations(DOMAINS, 2)}
    batches = []

    def score_groups(groups):
        batches.append(list(groups))
        return [family_score(g) for g in reversed(groups)][::-1]  # scored in any order, answered in order

    def one(group):  # a batch with one new group
        batches.append([group])
        return family_score(group)

    # two more group evaluations than one at a time needs (20): a batch's second plan is proposed before the
    # first is scored, and this start misleads every estimate
    search = PlanSearch(domains=DOMAINS, distances=wrong, singles=OWN, score_group=one, budget=22, batch=2,
                        score_groups=score_groups).run()
    assert max(len(b) for b in batches) == 2 and sum(len(b) == 2 for b in batches) >= 5
    scored = [g for b in batches for g in b]
    assert len(scored) == len(set(scored)) == search.evaluations <= 22  # each group scored once, within budget
    assert search.best[2] == (("a", "b", "c"), ("x", "y"))
    assert sum(s.new_groups for s in search.steps) == search.evaluations
    again = PlanSearch(domains=DOMAINS, distances=wrong, singles=OWN, score_group=family_score, budget=22,
                       batch=2).run()  # the same plans whether a batch's groups run together or one by one
    assert [(s.move, s.partition) for s in again.steps] == [(s.move, s.partition) for s in search.steps]


def test_batches_never_spend_more_than_the_budget_and_the_start_is_the_same_in_batches():
    for budget in (1, 2, 3, 5, 7):
        for batch in (1, 2, 4):
            search = PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=family_score,
                                budget=budget, batch=batch).run()
            assert search.evaluations == budget  # this space has more groups than any of these budgets
            start = [s.partition for s in search.steps if s.move == "agglomerative"]
            assert start == agglomerative(DOMAINS, DIST)[:len(start)]
    with pytest.raises(ValueError, match="batch must be >= 1"):
        PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=family_score, budget=4, batch=0)


def test_a_plan_needs_two_domains_and_every_own_accuracy():
    with pytest.raises(ValueError, match="at least 2 domains"):
        PlanSearch(domains=["a"], distances={}, singles={"a": 0.8}, score_group=family_score, budget=4)
    with pytest.raises(ValueError, match="own-adapter accuracy"):
        PlanSearch(domains=["a", "b"], distances=DIST, singles={"a": 0.8}, score_group=family_score, budget=4)


def test_the_front_marks_pareto_points_and_the_choice_follows_tolerance_and_max_bodies():
    best = {1: (("a", "b", "c", "x", "y"),), 2: (("a", "b", "c"), ("x", "y")), 3: (("a", "b"), ("c",), ("x", "y")),
            5: tuple((d,) for d in DOMAINS)}
    acc = {best[1]: 0.60, best[2]: 0.795, best[3]: 0.79, best[5]: 0.80}
    points = front_points(best, acc)
    assert [(p.bodies, p.pareto) for p in points] == [(1, True), (2, True), (3, False), (5, True)]
    pick, why = choose_plan(points, bound=0.80, tolerance=0.01)
    assert pick.bodies == 2 and "within 1.0 points" in why
    assert choose_plan(points, bound=0.80, tolerance=0.0)[0].bodies == 5
    assert choose_plan(points, bound=0.80, tolerance=0.30)[0].bodies == 1
    assert choose_plan(points, bound=0.80, tolerance=0.0, max_bodies=3)[0].bodies == 2
    assert choose_plan(points, bound=0.80, tolerance=0.0, max_bodies=1)[0].bodies == 1
    with pytest.raises(ValueError, match=">= 0"):
        choose_plan(points, bound=0.8, tolerance=-0.01)


def test_the_mean_accuracy_interval_weighs_domains_equally_and_holds_the_mean():
    correct = {"a": [1] * 90 + [0] * 10, "b": [1] * 5 + [0] * 5}
    iv = mean_accuracy_interval(correct)
    assert iv.accuracy == pytest.approx((0.9 + 0.5) / 2)  # not pooled (95 / 110)
    assert iv.low < iv.accuracy < iv.high
    assert mean_accuracy_interval(correct) == iv  # seeded
    perfect = mean_accuracy_interval({"a": [1] * 20, "b": [1] * 20})
    assert (perfect.low, perfect.accuracy, perfect.high) == (1.0, 1.0, 1.0)


def test_distances_from_fsd_and_from_cross_heads():
    assert fsd_distances(["a", "b", "c"], [[0, 0.2, 0.3], [0.2, 0, 0.4], [0.3, 0.4, 0]]) == {
        ("a", "b"): 0.2, ("a", "c"): 0.3, ("b", "c"): 0.4}
    own = {"a": 0.9, "b": 0.8}
    # a's adapter under b's head keeps b's accuracy; b's under a's head loses 0.3
    assert cross_head_distances(own, {("a", "b"): 0.85, ("b", "a"): 0.6}) == {("a", "b"): pytest.approx(0.15)}
    with pytest.raises(ValueError, match="lacks"):
        cross_head_distances(own, {("a", "b"): 0.85})


def test_a_body_key_survives_a_new_setting_at_its_default_and_changes_with_a_set_one(tmp_path, tiny_bert,
                                                                                    demo_domains):
    """Bodies searched before an upgrade stay reusable: a setting a later signmix adds, left at its
    default, does not change the key; a setting given a value does."""
    from search.settings.config import SearchConfig, load_config
    from search.plan.bodies import body_key, group_config
    from tests_support import write_config

    class UpgradedSearch(SearchConfig):  # a later signmix with one more search setting, off by default
        new_setting: int | None = None

    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"]))
    group = group_config(cfg, ["books", "movies"])
    upgraded = group.model_copy(update={"search": UpgradedSearch(**group.search.model_dump())})
    assert body_key(upgraded) == body_key(group)
    changed = group.model_copy(update={"search": UpgradedSearch(**group.search.model_dump(), new_setting=3)})
    assert body_key(changed) != body_key(group)
    other_seed = group.model_copy(update={"search": group.search.model_copy(update={"seed": 7})})
    assert body_key(other_seed) != body_key(group)


def test_the_floor_makes_the_search_split_the_losing_domain_off_and_ranks_plans_within_it_first():
    """Sharing a body with y lifts every other domain 5 points (1 without y) but costs y 6: on the mean y
    belongs in a shared body at every G; only the floor says y must leave."""
    def score(group):
        return {d: OWN[d] + (-0.06 if d == "y" else 0.05 if "y" in group else 0.01) for d in group}

    free = PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=score, budget=30).run()
    floored = PlanSearch(domains=DOMAINS, distances=DIST, singles=OWN, score_group=score, budget=30,
                         max_domain_loss=0.01).run()
    assert free.value(free.best[1]) > OWN["a"]  # on the mean one body is fine
    assert floored.worst(floored.best[1]) == ("y", pytest.approx(0.06))  # G = 1 cannot keep y
    assert not any(g == ("y",) for g in free.best[2])  # without the floor y shares a body at G = 2
    assert floored.best[2] == (("a", "b", "c", "x"), ("y",)) and floored.within_floor(floored.best[2])
    # the split of the worst domain came straight after the start, before any other move
    first_move = next(s for s in floored.steps if s.move != "agglomerative")
    assert first_move.move == "split" and ("y",) in first_move.partition


def test_the_chosen_plan_keeps_every_domain_within_the_floor_then_the_fewest_bytes():
    from search.plan.front import FrontPoint

    one = FrontPoint(bodies=1, partition=(tuple(DOMAINS),), accuracy=0.81, pareto=True, worst_domain="y",
                     worst_loss=0.06, bytes=100)
    two = FrontPoint(bodies=2, partition=(("a", "b", "c", "x"), ("y",)), accuracy=0.805, pareto=False,
                     worst_domain="x", worst_loss=0.004, bytes=300)
    two_masked = FrontPoint(bodies=2, partition=two.partition, accuracy=0.806, pareto=False, worst_domain="x",
                            worst_loss=0.0, bytes=220)
    bound = 0.80
    assert choose_plan([one, two], bound=bound, tolerance=0.01)[0] is one  # the mean alone: one body
    pick, why = choose_plan([one, two], bound=bound, tolerance=0.01, max_domain_loss=0.01)
    assert pick is two and "plan.max_domain_loss" in why and "worst domain x -0.4 points" in why
    assert choose_plan([one, two, two_masked], bound=bound, tolerance=0.01, max_domain_loss=0.01)[0] is two_masked
    assert choose_plan([one, two], bound=bound, tolerance=0.01, max_bodies=1, max_domain_loss=0.01)[0] is one
    with pytest.raises(ValueError, match="max_domain_loss must be >= 0"):
        choose_plan([one], bound=bound, tolerance=0.01, max_domain_loss=-0.1)


def test_a_group_picks_the_option_that_keeps_its_domains_within_the_floor_then_the_fewest_bytes():
    from search.plan.serving_choice import choose_group_option, worst_domain

    singles = {"a": 0.80, "b": 0.80}
    by_option = {"plain": {"a": 0.84, "b": 0.76}, "rescaled": {"a": 0.83, "b": 0.795},
                 "tall": {"a": 0.83, "b": 0.80}, "emr": {"a": 0.70, "b": 0.90}}
    extra = {"plain": 0, "rescaled": 8, "tall": 64, "emr": 68}
    assert worst_domain(by_option["plain"], singles) == ("b", pytest.approx(0.04))
    # rescaled and tall keep b within 1 point; rescaled is within 1 point of tall's mean and costs fewer bytes
    assert choose_group_option(by_option, singles, extra, max_domain_loss=0.01, tolerance=0.01)[0] == "rescaled"
    assert choose_group_option(by_option, singles, extra, max_domain_loss=0.01, tolerance=0.0)[0] == "tall"
    # without a floor: the fewest bytes within the tolerance of the best mean (tall's 0.815)
    assert choose_group_option(by_option, singles, extra, max_domain_loss=None, tolerance=0.01)[0] == "rescaled"
    assert choose_group_option(by_option, singles, extra, max_domain_loss=None, tolerance=0.02)[0] == "plain"
    # no option within the floor: the one whose worst domain loses least
    option, why = choose_group_option({"plain": by_option["plain"], "emr": by_option["emr"]}, singles, extra,
                                      max_domain_loss=0.0, tolerance=0.01)
    assert option == "plain" and "no option keeps every domain within the floor" in why
