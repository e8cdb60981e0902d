"""Benchmark 4: time and memory of the FSD work as adapters grow in number and size.

Prints, for N adapters of P parameters: building the sign index (signs + FSD matrix),
one subset FSD of each measure, and one pre-filter decision (``MixtureSpace.check``) for
a subset of 8 members, with the memory the sign index holds. The same decision on int8
signs (one byte per weight, before the signs were packed as bits) is the baseline of the
packed index: its time and the memory of both sign matrices. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping

import torch

from spaces.fsd import FSD_MEASURES, SignIndex, sign_vector
from spaces.space import MixtureSpace


class Int8SignIndex:
    """The sign index before bit packing: the int8 [N, P] sign matrix, which the
    ``any_conflict`` measure reads with torch (``(sub > 0).any(0) & (sub < 0).any(0)``)."""

    def __init__(self, names, signs: torch.Tensor, matrix: torch.Tensor) -> None:
        self.names, self.signs, self.matrix = tuple(names), signs, matrix
        self._position = {name: i for i, name in enumerate(self.names)}

    def subset_fsd(self, members, measure: str = "mean_pairwise") -> float:
        return FSD_MEASURES[measure](self.matrix, self.signs, [self._position[m] for m in members])

    @property
    def signs_nbytes(self) -> int:
        return self.signs.numel() * self.signs.element_size()


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


class LazyAdapters(Mapping):
    """N adapters of P weights made on access (one shared base plus each one's own drift, from
    its own seed): a large index is built without holding N * P floats at once. ``make_s``
    adds up the seconds spent making them, to tell them apart from the index's own time."""

    def __init__(self, n: int, p: int, seed: int = 0) -> None:
        self.names, self.p, self.seed = [f"d{i:03d}" for i in range(n)], p, seed
        self.base = torch.randn(p, generator=torch.Generator().manual_seed(seed))
        self.make_s = 0.0

    def __getitem__(self, name: str) -> dict:
        start = time.perf_counter()
        own = torch.randn(self.p, generator=torch.Generator().manual_seed(self.seed + 1 + self.names.index(name)))
        weights = {"w": own.mul_(1.5).add_(self.base)}
        self.make_s += time.perf_counter() - start
        return weights

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def bench(n: int, p: int, seed: int = 0, *, int8: bool = False, lazy: bool = False) -> dict:
    """One row of the table; with ``int8``, also the decision on int8 signs (the baseline);
    with ``lazy``, adapters are made while the index reads them (:class:`LazyAdapters`)."""
    gen = torch.Generator().manual_seed(seed)
    # One shared "initialisation" plus per-adapter drift: realistic, partly agreeing signs.
    if lazy:
        weights = LazyAdapters(n, p, seed)
    else:
        base = torch.randn(p, generator=gen)
        weights = {f"d{i:02d}": {"w": base + 1.5 * torch.randn(p, generator=gen)} for i in range(n)}
    build_s, index = _timed(lambda w=weights: SignIndex.from_weights(w))
    signs8 = torch.stack([sign_vector(weights[name]) for name in index.names]) if int8 else None
    make_s = weights.make_s if lazy else None  # making the random adapters, inside build_s
    del weights
    members = list(index.names[: min(n, 8)])
    space = MixtureSpace(domains=index.names, targets=(members[0],), max_fsd=0.5, fsd_measure="any_conflict")
    spec = space.to_mixture_spec(space.params_for(members[1:]))
    row = {"N": n, "P": p, "index_build_s": build_s, "index_mib": index.nbytes() / 2**20}
    if lazy:
        row["make_s"] = make_s
    for measure in ("mean_pairwise", "any_conflict"):
        row[f"{measure}_ms"] = _timed(lambda m=measure: index.subset_fsd(members, m), repeat=5)[0] * 1e3
    row["decision_ms"] = _timed(lambda: space.check(spec, index), repeat=5)[0] * 1e3
    row["signs_mib"] = index.packed.nbytes / 2**20
    if int8:
        before = Int8SignIndex(index.names, signs8, index.matrix)
        assert before.subset_fsd(members, "any_conflict") == index.subset_fsd(members, "any_conflict")
        row["int8_mib"] = before.signs_nbytes / 2**20
        row["int8_decision_ms"] = _timed(lambda: space.check(spec, before), repeat=5)[0] * 1e3
    return row


def bench_measure_gate(n: int, *, p: int = 100_000, members: int = 8, evaluated: int = 200, seed: int = 0) -> dict:
    """The conflict gate over the cached measures (``conflict_measure: auto``) at ``n`` adapters:
    one decision (``MixtureSpace.check`` then ``MeasureGate.check`` on the chosen measure, a
    subset of ``members``) and one evaluated mixture recorded (every measure's subset value and
    the refreshed evidence of all of them), after ``evaluated`` mixtures."""
    import random

    import numpy as np

    from search.proposals.measure_gate import MeasureGate
    from spaces.measures import PAIRWISE_MEASURES, PairwiseMeasure

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(p, generator=gen)
    index = SignIndex.from_weights(((f"d{i:03d}", {"w": base + 1.5 * torch.randn(p, generator=gen)})
                                    for i in range(n)))
    measures = {}
    for name in PAIRWISE_MEASURES[1:]:
        m = rng.uniform(0, 1, (n, n))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 0)
        measures[name] = PairwiseMeasure(name, index.names, m)
    space = MixtureSpace(domains=index.names, targets=(index.names[0],), max_fsd=None, max_members=members)
    gate = MeasureGate(measures=measures, candidates=list(PAIRWISE_MEASURES), mode="auto", space=space,
                       tolerance=0.01, per_size=0)
    pick = random.Random(seed)
    specs = [space.to_mixture_spec(space.params_for(pick.sample(index.names[1:], pick.randint(1, members - 1))))
             for _ in range(evaluated + 1)]
    for spec in specs[:-1]:  # accuracy that the cross_head measure predicts: the gate filters on it
        gate.observe(spec.key, spec.members, 0.9 - 0.3 * measures["cross_head"].subset(spec.members), index)
    spec = specs[-1]
    decision_s, verdict = _timed(lambda: gate.check(space.check(spec, index), spec.members), repeat=50)
    record_s, _ = _timed(lambda: gate.observe(spec.key, spec.members, 0.5, index), repeat=5)
    return {"N": n, "chosen": gate.chosen, "decision": gate.decision, "decision_ms": decision_s * 1e3,
            "record_ms": record_s * 1e3, "evaluated": evaluated}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--adapters", type=int, help="one row: this many adapters (made lazily; e.g. 200)")
    parser.add_argument("--params", type=int, default=10_000_000, help="... of this many weights (default 10M)")
    parser.add_argument("--measure-gate", type=int, metavar="N",
                        help="only the conflict gate over the cached measures at N adapters (e.g. 200)")
    args = parser.parse_args(argv)
    if args.measure_gate:
        torch.set_num_threads(2)
        r = bench_measure_gate(args.measure_gate)
        print(f"conflict gate (auto over 4 cached measures) at {r['N']} adapters after {r['evaluated']} evaluated "
              f"mixtures: chose {r['chosen']} ({r['decision']}); one decision {r['decision_ms']:.3f} ms; one "
              f"evaluated mixture recorded (4 subset values, the evidence of 4 measures refreshed) "
              f"{r['record_ms']:.1f} ms; load {__import__('os').getloadavg()[0]:.1f}")
        return
    if args.adapters:
        import resource

        torch.set_num_threads(2)
        r = bench(args.adapters, args.params, lazy=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"{r['N']} adapters x {r['P']:,} weights: index built in {r['index_build_s'] - r['make_s']:.1f}s "
              f"(signs packed to bits and the FSD matrix; {r['index_build_s']:.1f}s in all with "
              f"{r['make_s']:.1f}s making the random adapters while it reads them), index {r['index_mib']:.0f} MiB "
              f"(bit signs {r['signs_mib']:.0f} MiB); one decision (8 members, any_conflict) {r['decision_ms']:.3f} "
              f"ms; mean_pairwise {r['mean_pairwise_ms']:.3f} ms, any_conflict {r['any_conflict_ms']:.3f} ms; "
              f"process peak RSS {peak:.0f} MiB; load {__import__('os').getloadavg()[0]:.1f}")
        return
    ns = (4, 16, 64)
    ps = (100_000, 1_000_000) if args.quick else (100_000, 1_000_000, 10_000_000)
    torch.set_num_threads(2)
    print("Benchmark 4: FSD scaling (sign index built once; a decision is one MixtureSpace.check, 8 members, "
          "any_conflict)")
    header = (f"{'N':>3} {'P':>11} {'build s':>8} {'index MiB':>9} {'mean_pairwise ms':>16} {'any_conflict ms':>15} "
              f"{'decision ms':>11} | {'int8 decision ms':>16} {'int8 signs MiB':>14} {'bit signs MiB':>13}")
    print(header)
    for n in ns:
        for p in ps:
            r = bench(n, p, int8=True)
            print(f"{r['N']:>3} {r['P']:>11,} {r['index_build_s']:>8.2f} {r['index_mib']:>9.1f} "
                  f"{r['mean_pairwise_ms']:>16.3f} {r['any_conflict_ms']:>15.3f} {r['decision_ms']:>11.3f} | "
                  f"{r['int8_decision_ms']:>16.3f} {r['int8_mib']:>14.1f} {r['signs_mib']:>13.1f}")
    print("int8: the same decision on the int8 [N, P] signs (before the bit packing); MiB: the sign matrices alone")


if __name__ == "__main__":
    main()
