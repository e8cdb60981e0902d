"""The planner's own cost at the scale users launch (issue 31, item 5): N = 16 to 128 synthetic domains.

A plan's real cost is its group evaluations (each a search of a group's body: 45 to 180 s on 2 CPU
cores for the 16 real domains, BENCHMARKS "Serving plans"). What the driver adds between them (the
partitions, the moves, their estimates, the record) must stay a small part of that: this measures it
with a synthetic evaluator that answers at once, so every second counted is the planner's.

Synthetic domains fall into families of 4 to 8; sharing a body costs a domain a point for every
member of another family, and the distances are the families with noise (what activation FSD gives
on real data, roughly). The budget is the default, 4N group evaluations.

    python tests/benchmarks/bench_planner_scale.py --sizes 16 32 64 128

Prints, per N: group evaluations, plans scored, the planner's seconds in all and per group
evaluation, that time as a share of a real group evaluation (REAL_GROUP_S, the fastest of the
16-domain run), and how far the best plan it found at G = the number of families is below the
synthetic optimum there (one body per family: 0.00 when it found the families).
"""

from __future__ import annotations

import argparse
import random
import time
from statistics import mean

REAL_GROUP_S = 45.0  # the fastest group evaluation of the 16-domain plan on 2 cores (BENCHMARKS "Serving plans")


def synthetic(n: int, seed: int = 0):
    """Domains, distances, own accuracies, a group evaluator and each domain's family for ``n``
    synthetic domains."""
    rng = random.Random(seed)
    domains = [f"d{i:03d}" for i in range(n)]
    family, i = {}, 0
    while i < n:
        size = rng.randint(4, 8)
        for d in domains[i:i + size]:
            family[d] = i
        i += size
    singles = {d: rng.uniform(0.70, 0.90) for d in domains}
    distances = {(a, b): (0.1 if family[a] == family[b] else 0.5) + rng.uniform(0.0, 0.1)
                 for k, a in enumerate(domains) for b in domains[k + 1:]}

    def score_group(group):
        out = {}
        for d in group:
            strangers = sum(family[e] != family[d] for e in group)
            out[d] = singles[d] + 0.005 - 0.01 * strangers
        return out

    return domains, distances, singles, score_group, family


def families_plan(family) -> tuple:
    """The synthetic optimum at G = the number of families: one body per family (every member +0.5 points)."""
    from search.plan.partition import make_partition

    return make_partition([[d for d in family if family[d] == f] for f in sorted(set(family.values()))])


def measure(n: int, budget: int | None, floor: float | None) -> dict:
    from search.plan.planner import PlanSearch

    domains, distances, singles, score, family = synthetic(n)
    spent = [0.0]

    def timed(group):
        started = time.perf_counter()
        try:
            return score(group)
        finally:
            spent[0] += time.perf_counter() - started

    kwargs = {"max_domain_loss": floor} if floor is not None else {}
    started = time.perf_counter()
    search = PlanSearch(domains=domains, distances=distances, singles=singles, score_group=timed,
                        budget=budget if budget is not None else 4 * n, **kwargs).run(progress=lambda line: None)
    wall = time.perf_counter() - started
    own = wall - spent[0]
    evaluations = max(1, search.evaluations)
    optimum = families_plan(family)
    found = search.best.get(len(optimum))
    best_value = mean(score(g)[d] if len(g) > 1 else singles[d] for g in optimum for d in g)
    gap = None if found is None else best_value - search.value(found)
    return {"n": n, "evaluations": search.evaluations, "planner_s": own, "per_evaluation_s": own / evaluations,
            "share": own / evaluations / REAL_GROUP_S, "families": len(optimum),
            "gap": gap, "steps": len(search.steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--budget", type=int, default=None, help="group evaluations (default 4N, the product's)")
    parser.add_argument("--max-domain-loss", type=float, default=None, help="the floor, in accuracy (e.g. 0.01)")
    args = parser.parse_args()
    print(f"| N | group evaluations | plans scored | planner s (all) | planner s per group evaluation | share of a "
          f"real group evaluation ({REAL_GROUP_S:.0f} s) | G = families | its best plan below the families' (points) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        r = measure(n, args.budget, args.max_domain_loss)
        gap = "none found" if r["gap"] is None else f"{round(100 * r['gap'], 2) + 0.0:.2f}"
        print(f"| {r['n']} | {r['evaluations']} | {r['steps']} | {r['planner_s']:.2f} | {r['per_evaluation_s']:.4f} | "
              f"{100 * r['share']:.3f}% | {r['families']} | {gap} |", flush=True)


if __name__ == "__main__":
    main()
