"""Benchmark 3: search efficiency -- regret of the strategies at fixed evaluation budgets.

How close does each strategy get to the best mixture of the space, given a budget of 5%,
10%, 15% and 20% of the exhaustive count of evaluations? And how many evaluations does
the sign-conflict pre-filter save? Run: ``make bench`` (or this file with ``--help``).

The problem (generated, seeded; every parameter is in :class:`Problem` below)
------------------------------------------------------------------------------
Real adapters cost minutes per evaluation, so the accuracy of a mixture comes from an
*oracle*; the FSD the search and the pre-filter see is real, computed by
``SignIndex.from_weights`` from generated adapter weights.

* **Adapters.** N domains (``--domains``, default 10) fall into a few latent clusters
  (sizes as equal as possible). Each domain's adapter is a P-vector
  ``w_i = init_scale * s + d_i``: ``s`` is the shared initialisation (every adapter starts
  from the same seed), ``d_i`` what training on domain i added. The cluster directions
  ``c_j = sum_m A_jm z_m`` mix a few independent Gaussian fields ``z_m`` with random unit
  loadings ``A_j``, so two clusters are partly related or point partly opposite
  (correlation ``A_i . A_j``, of either sign); a domain direction is
  ``d_i = sqrt(a_i) c_j + sqrt(1 - a_i) e_i`` with a private part ``e_i`` and an affinity
  ``a_i`` drawn per domain from ``affinity_range`` (some domains are typical of their
  cluster, some are loners). So FSD is low within a cluster and high across it, with
  spread on both sides, as in the paper's FSD matrices.
* **Target.** One domain (``target_index``), always a member (``require_targets``).
* **Accuracy oracle** of a mixture S (containing the target t, k = |S|) at prune ratio r::

      acc = base_acc
            + transfer_gain * (1 - exp(-R / transfer_scale))      # R = sum_{m in S, m != t} max(0, cos(d_t, d_m))
            - interference * (1 - 1/k) * FSD(S)                   # FSD(S): SignIndex.subset_fsd(S, "mean_pairwise")
            + prune_effect(r, k)
            + noise(S, r)

  - *transfer*: members related to the target (positive cosine of their *latent* training
    directions, which the search never sees) help, with diminishing returns;
  - *interference*: the paper's finding -- accuracy falls with the mixture's sign
    conflict; it is zero for a lone adapter and grows with the dilution ``1 - 1/k`` of
    the target's own adapter in a uniform average. FSD is measured on the real sign
    vectors, so it is only a noisy proxy of the latent relatedness;
  - *pruning*: 0.5 is about neutral; 0.9 costs a little for small mixtures and a little
    less as k grows (sparse adapters conflict less: the paper's Alg. 4), a weak
    interaction;
  - *noise*: a deterministic, uniform ``+-noise`` from a hash of the mixture key, so the
    landscape is not trivially monotone and repeated evaluations agree.

  The parameters were chosen once from the paper's qualitative findings (mixing a few
  related adapters helps a little, mixing all costs several points, 90% pruning keeps
  accuracy) and were not tuned against this benchmark's results.

Protocol
--------
The exhaustive optimum is computed once: the oracle on every mixture of
``space.size()``. Each strategy is a real ``SignConflictSearcher`` around
``make_strategy(...)``, driven by hand as Ray Tune would (``suggest`` ->
oracle -> ``on_trial_complete``), one trial at a time. The budget counts evaluated
mixtures; proposals rejected by the pre-filter and repeats of evaluated mixtures cost
nothing. "Pre-filter" here is a *fixed* threshold at the 75th percentile of the FSDs of
the space's member sets (``spaces.space.auto_max_fsd``: what ``max_fsd: auto`` meant before
the FSD gate replaced it); the first version's threshold (the 75th percentile of the
*pairwise* FSDs) runs beside it as "before". The product's ``max_fsd: auto`` is now the
FSD gate (``search/proposals/fsd_gate.py``): it filters only once the search's own evaluations show, by
partial Spearman given the number of members, that FSD predicts accuracy, with a threshold
that keeps every near-best mixture seen (tolerance 0.01 here: the oracle has no validation
set). It runs as "+ FSD gate": on this oracle, built so that accuracy falls with FSD, it
should decide ``filter``; the real-data benchmark (``bench_search_real.py``, the headline
of BENCHMARKS.md) measures it where FSD may carry no signal.
``tpe`` runs with the product's warm start (the greedy path first) and without it;
``tpe``/``random`` with and without the pre-filter; ``greedy_fsd`` (the paper's Alg. 1,
deterministic, at most N-1+1 proposals, prune ratio 0) without it. The searcher is driven
by ``search_driving.drive_search`` (shared with the real-data benchmark).

One run per strategy and seed at the largest budget gives every smaller budget too: with
one trial in flight, the run with budget B is the prefix of the larger run up to its B-th
evaluation, as long as the strategy is built the same way for both (for ``tpe`` the
budget only sets ``n_startup_trials = min(10, max(3, B // 4))``, 10 at every budget here;
the script checks that and otherwise runs each budget separately, and ``--separate-runs``
forces that).

Regret = optimum - best accuracy found, in accuracy points (x100), mean [min, max] over
seeds. "Saved" = ``searcher.counts.filtered`` (rejected proposals); of the distinct
rejected mixtures, how many are worse than the best the run found (an evaluation that
would have been wasted) and how many better (what the filter cost).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from dataclasses import dataclass, field

import sys
from pathlib import Path

import torch

from search.proposals.fsd_gate import FsdGate
from spaces.gate_evidence import DEFAULT_TOLERANCE
from spaces.fsd import SignIndex
from spaces.space import MixtureSpace, auto_max_fsd
from spaces.spec import MixtureSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_driving import drive_search  # noqa: E402


@dataclass(frozen=True)
class Problem:
    """Every parameter of the generated problem and its oracle (see the module docstring)."""

    n_domains: int = 10
    n_clusters: int = 4
    n_cluster_factors: int = 4  # latent factors the cluster directions mix (see build_problem)
    n_params: int = 20_000  # P, the adapter size
    init_scale: float = 0.3  # weight of the shared initialisation s
    affinity_range: tuple[float, float] = (0.3, 0.8)  # a_i: share of a domain's direction from its cluster
    target_index: int = 0
    base_acc: float = 0.80  # the target's own adapter
    transfer_gain: float = 0.08  # the most related members can add
    transfer_scale: float = 1.0  # diminishing returns in R
    interference: float = 0.20  # accuracy lost per unit of (1 - 1/k) * mean pairwise FSD
    prune_effect: dict = field(default_factory=lambda: {0.0: (0.0, 0.0), 0.5: (0.001, 0.0),
                                                         0.9: (-0.006, 0.001)})  # r: (at k=1, per extra member)
    noise: float = 0.003  # +- uniform, deterministic per mixture
    prune_ratios: tuple[float, ...] = (0.0, 0.5, 0.9)
    max_fsd_percentile: float = 75.0
    seed: int = 1234  # the problem's seed (the searches have their own)


def build_problem(p: Problem):
    """Adapter weights -> SignIndex, latent cosines to the target, and the target's name."""
    gen = torch.Generator().manual_seed(p.seed)
    n, c = p.n_domains, p.n_clusters
    names = [f"d{i:02d}" for i in range(n)]
    cluster_of = [i * c // n for i in range(n)]
    # Cluster directions c = A z: z are independent Gaussian fields, A has random unit rows,
    # so the clusters' correlation A A^T spreads over both signs: some task families are
    # partly related, others push the weights partly the opposite way.
    loadings = torch.randn(c, p.n_cluster_factors, generator=gen, dtype=torch.float64)
    loadings = loadings / loadings.norm(dim=1, keepdim=True)
    clusters = (loadings @ torch.randn(p.n_cluster_factors, p.n_params, generator=gen, dtype=torch.float64)).float()
    lo, hi = p.affinity_range
    affinity = lo + (hi - lo) * torch.rand(n, generator=gen)
    init = torch.randn(p.n_params, generator=gen)
    directions = torch.stack([affinity[i].sqrt() * clusters[cluster_of[i]]
                              + (1 - affinity[i]).sqrt() * torch.randn(p.n_params, generator=gen)
                              for i in range(n)])
    weights = {names[i]: {"adapter.weight": p.init_scale * init + directions[i]} for i in range(n)}
    index = SignIndex.from_weights(weights)
    target = names[p.target_index]
    unit = directions / directions.norm(dim=1, keepdim=True)
    cos = unit @ unit[p.target_index]
    relatedness = {names[i]: max(0.0, float(cos[i])) for i in range(n) if i != p.target_index}
    return index, target, relatedness, cluster_of


class Oracle:
    """The accuracy of a mixture (formula in the module docstring), cached by mixture key."""

    def __init__(self, p: Problem, index: SignIndex, target: str, relatedness: dict[str, float]) -> None:
        self.p, self.index, self.target, self.relatedness = p, index, target, relatedness
        self.cache: dict[str, float] = {}

    def __call__(self, spec: MixtureSpec) -> float:
        key = spec.key
        if key not in self.cache:
            self.cache[key] = self._accuracy(spec, key)
        return self.cache[key]

    def _accuracy(self, spec: MixtureSpec, key: str) -> float:
        p, k = self.p, spec.k
        assert self.target in spec.members
        r = sum(self.relatedness[m] for m in spec.members if m != self.target)
        transfer = p.transfer_gain * (1 - math.exp(-r / p.transfer_scale))
        fsd = self.index.subset_fsd(spec.members, "mean_pairwise")
        interference = p.interference * (1 - 1 / k) * fsd
        at_one, per_member = p.prune_effect[spec.prune_ratio]
        prune = at_one + per_member * (k - 1)
        u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        return p.base_acc + transfer - interference + prune + p.noise * (2 * u - 1)


def _startup(budget: int) -> int:
    """TPE's n_startup_trials for a budget, as search.proposals.strategies._tpe sets it."""
    return min(10, max(3, budget // 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="search seeds 0..SEEDS-1 (default 5)")
    parser.add_argument("--domains", type=int, default=10,
                        help="number of domains, >= 10 (default 10; at 12 the space has 6144 mixtures, a 20%% "
                             "budget is 1229 evaluations, and TPE's cost grows with the square of its trials)")
    parser.add_argument("--separate-runs", action="store_true",
                        help="one run per budget instead of snapshots of the largest run")
    args = parser.parse_args(argv)
    if args.domains < 4 or args.seeds < 1:
        parser.error("need --domains >= 4 and --seeds >= 1")
    torch.set_num_threads(2)
    started = time.perf_counter()

    problem = Problem(n_domains=args.domains)
    index, target, relatedness, cluster_of = build_problem(problem)
    oracle = Oracle(problem, index, target, relatedness)
    common = dict(domains=index.names, targets=(target,), prune_ratios=problem.prune_ratios, require_targets=True)
    unfiltered = MixtureSpace(**common, max_fsd=None)
    threshold = auto_max_fsd(unfiltered, index, problem.max_fsd_percentile)
    # The first version's threshold: a percentile of the pairwise FSDs (not of subsets).
    rows, cols = torch.triu_indices(len(index.names), len(index.names), offset=1)
    pairwise = float(torch.quantile(index.matrix[rows, cols].to(torch.float64), problem.max_fsd_percentile / 100.0))
    # True: the product's pre-filter; "pairwise": the first version's; False: none.
    spaces = {True: MixtureSpace(**common, max_fsd=threshold), "pairwise": MixtureSpace(**common, max_fsd=pairwise),
              False: unfiltered}
    size = spaces[False].size()

    # Exhaustive optimum, once.
    accs: dict[str, float] = {}
    for params in spaces[False].enumerate():
        spec = spaces[False].to_mixture_spec(params)
        accs[spec.key] = oracle(spec)
    best_key = max(accs, key=accs.get)
    optimum = accs[best_key]
    best_spec = next(s for s in (spaces[False].to_mixture_spec(q) for q in spaces[False].enumerate())
                     if s.key == best_key)
    n_pass = sum(1 for q in spaces[True].enumerate() if spaces[True].check(spaces[True].to_mixture_spec(q), index).accepted)
    n_pass_pairwise = sum(1 for q in spaces["pairwise"].enumerate()
                          if spaces["pairwise"].check(spaces["pairwise"].to_mixture_spec(q), index).accepted)
    best_pass = max(accs[s.key] for s in (spaces[True].to_mixture_spec(q) for q in spaces[True].enumerate())
                    if spaces[True].check(s, index).accepted)
    within_half = sum(1 for v in accs.values() if optimum - v <= 0.005)

    fractions = (0.05, 0.10, 0.15, 0.20)
    budgets = [math.ceil(f * size) for f in fractions]
    same_startup = len({_startup(b) for b in budgets}) == 1
    separate = args.separate_runs or not same_startup

    tri = index.matrix[torch.triu_indices(len(index.names), len(index.names), offset=1).unbind()]
    same = [float(index.matrix[i, j]) for i in range(len(cluster_of)) for j in range(i + 1, len(cluster_of))
            if cluster_of[i] == cluster_of[j]]
    cross = [float(index.matrix[i, j]) for i in range(len(cluster_of)) for j in range(i + 1, len(cluster_of))
             if cluster_of[i] != cluster_of[j]]
    soup_all = oracle(spaces[False].to_mixture_spec(spaces[False].params_for(spaces[False].free_domains)))
    print(f"Benchmark 3: search efficiency ({args.domains} domains in {problem.n_clusters} clusters, "
          f"P={problem.n_params:,}, target {target}, prune ratios {list(problem.prune_ratios)}, "
          f"{args.seeds} seeds)")
    print(f"  space: {size} mixtures; budgets {budgets} evaluations = {[f'{f:.0%}' for f in fractions]}")
    print(f"  pairwise FSD: within clusters {min(same):.3f}..{max(same):.3f}, across {min(cross):.3f}..{max(cross):.3f}"
          f" (all: median {float(tri.median()):.3f})")
    print(f"  pre-filter max_fsd = 75th percentile of the member sets' FSDs = {threshold:.4f} (before: of the "
          f"pairwise FSDs = {pairwise:.4f}, passes {n_pass_pairwise} of {size})")
    print(f"  pre-filter passes {n_pass} of {size} mixtures; optimum {optimum * 100:.2f} ({best_spec.label()}, "
          f"FSD {index.subset_fsd(best_spec.members):.4f}, {'passes' if spaces[True].check(best_spec, index).accepted else 'REJECTED by'} the pre-filter); "
          f"best passing {best_pass * 100:.2f}")
    print(f"  target alone {accs[spaces[False].to_mixture_spec(spaces[False].params_for(())).key] * 100:.2f}, "
          f"soup of all {soup_all * 100:.2f}; mixtures within 0.5 points of the optimum: {within_half} of {size}")
    print(f"  runs: {'one per budget' if separate else 'one per seed at the largest budget, snapshots at the smaller'}")

    # (strategy, pre-filter, warm start); tpe's warm start is the product default.
    # "gate": the product's max_fsd: auto (a fresh FsdGate per run, over the unfiltered space).
    spaces["gate"] = unfiltered
    runs = [("tpe", True, "greedy_fsd"), ("tpe", "gate", "greedy_fsd"), ("tpe", "pairwise", "greedy_fsd"),
            ("tpe", False, "greedy_fsd"),
            ("tpe", True, "none"), ("tpe", False, "none"),
            ("random", True, "none"), ("random", False, "none"), ("greedy_fsd", False, "none")]
    results: dict[tuple, list[dict[int, dict]]] = {r: [] for r in runs}
    for name, prefilter, warm in runs:
        seeds = [0] if name == "greedy_fsd" else range(args.seeds)  # deterministic: one run
        for seed in seeds:
            study = f"bench3-{name}-{prefilter}-{warm}-{seed}"

            def gate() -> FsdGate | None:
                return (FsdGate(mode="auto", space=unfiltered, tolerance=DEFAULT_TOLERANCE)
                        if prefilter == "gate" else None)

            if separate:
                per = {}
                for b in budgets:
                    per.update(drive_search(name, spaces[prefilter], index, oracle, seed, b, [b], f"{study}-{b}", warm,
                                            optimum - 0.005, gate=gate()))
            else:
                per = drive_search(name, spaces[prefilter], index, oracle, seed, budgets[-1], budgets, study, warm,
                                   optimum - 0.005, gate=gate())
            results[(name, prefilter, warm)].append(per)

    def label(name: str, prefilter, warm: str) -> str:
        filt = {True: "+ pre-filter", "gate": "+ FSD gate", "pairwise": "+ pairwise filter",
                False: "(no filter)"}[prefilter]
        return f"{name}{' cold' if name == 'tpe' and warm == 'none' else ''} {filt}"

    print()
    print("Regret (optimum - best found), accuracy points: mean [min, max] over seeds")
    head = f"{'strategy':<28}" + "".join(f"{f'{f:.0%} ({b})':>22}" for f, b in zip(fractions, budgets))
    print(head)
    mean_regret: dict[tuple[str, bool], list[float]] = {}
    for run in runs:
        cells, means = [], []
        for b in budgets:
            regrets = [(optimum - per[b]["best"]) * 100 for per in results[run]]
            m = sum(regrets) / len(regrets)
            means.append(m)
            cells.append(f"{m:6.2f} [{min(regrets):5.2f}, {max(regrets):5.2f}]")
        mean_regret[run] = means
        print(f"{label(*run):<28}" + "".join(f"{c:>22}" for c in cells))

    print()
    print("Evaluations actually made (mean over seeds; fewer than the budget when the search ran out)")
    print(f"{'strategy':<28}" + "".join(f"{b:>10}" for b in budgets))
    for run in runs:
        evals = [sum(per[b]["evaluated"] for per in results[run]) / len(results[run]) for b in budgets]
        print(f"{label(*run):<28}" + "".join(f"{e:>10.1f}" for e in evals))

    print()
    print(f"Evaluations until within 0.5 points of the optimum (mean [min, max] over seeds; '-' = not within "
          f"{budgets[-1]})")
    for run in runs:
        got = [per[budgets[-1]]["reached"] for per in results[run]]
        cell = ("-" if None in got else
                f"{sum(got) / len(got):6.1f} [{min(got)}, {max(got)}]")
        print(f"{label(*run):<28}{cell:>22}")

    print()
    print("Pre-filter savings (mean over seeds): rejected proposals (= searcher.counts.filtered); distinct "
          "rejected mixtures; of those, worse / better than the run's best")
    print(f"{'strategy':<28}{'budget':>8}{'proposals':>11}{'rejected':>10}{'distinct':>10}{'worse':>8}{'better':>8}")
    for run in [r for r in runs if r[1]]:
        for b in budgets:
            rows = results[run]
            k = len(rows)
            prop = sum(per[b]["proposals"] for per in rows) / k
            rej = sum(per[b]["filtered"] for per in rows) / k
            dist = sum(len(per[b]["filtered_keys"]) for per in rows) / k
            worse = sum(sum(1 for key in per[b]["filtered_keys"] if accs[key] < per[b]["best"]) for per in rows) / k
            better = sum(sum(1 for key in per[b]["filtered_keys"] if accs[key] > per[b]["best"]) for per in rows) / k
            print(f"{label(*run):<28}{b:>8}{prop:>11.1f}{rej:>10.1f}{dist:>10.1f}{worse:>8.1f}{better:>8.1f}")

    print()
    tpe_f, rnd = mean_regret[("tpe", True, "greedy_fsd")], mean_regret[("random", False, "none")]
    ok_budgets = [b for b, f, r in zip(budgets, fractions, tpe_f) if f <= 0.15 + 1e-9 and r <= 0.5]
    goal1 = bool(ok_budgets)
    goal2 = all(t < r for t, r in zip(tpe_f, rnd))
    goal2f = all(t < r for t, r in zip(tpe_f, mean_regret[("random", True, "none")]))
    print(f"Goal 1 (tpe + pre-filter within 0.5 points of the optimum, mean over seeds, with <= 15% of the "
          f"evaluations): {'HOLDS' if goal1 else 'DOES NOT HOLD'} "
          f"(mean regret at 5/10/15%: {', '.join(f'{r:.2f}' for r in tpe_f[:3])})")
    print(f"Goal 2 (tpe + pre-filter beats random at every budget, mean regret): "
          f"{'HOLDS' if goal2 else 'DOES NOT HOLD'} vs random without the filter; "
          f"{'holds' if goal2f else 'does not hold'} vs random with it")
    gated = [per[budgets[-1]] for per in results[("tpe", "gate", "greedy_fsd")]]

    def gate_cell(g: dict) -> str:
        limit = "-" if g["threshold"] is None else f"{g['threshold']:.4f}"
        return f"{g['decision']} (rho {g['rho']:+.2f}, p {g['p']:.2g}, n {g['n']}, threshold {limit})"

    print("FSD gate (tpe + FSD gate, at the end of each seed's run): " + "; ".join(gate_cell(g) for g in gated))
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
