"""One plan's neighbours estimated all at once, from what they change (the planner's inner loop).

A neighbour of a plan (:func:`search.plan.partition.neighbours`) differs from it in one or two
groups, so its estimate is the plan's value minus the terms of the groups it removes plus the
terms of the groups it adds. A group's estimate term comes from a sum over its pairs, and the
pair sums of "a group less one domain", "a group plus one domain", "a group with one domain traded" and "two groups merged"
follow from one product of a pair matrix with the plan's membership. So every neighbour of a
plan (moves N x G, splits N, swaps N x N, merges G x G) is a cell of a few arrays, computed in
a handful of numpy operations instead of one partition built and summed per neighbour.

The estimate of a new group is :meth:`search.plan.planner.PlanSearch.estimate`'s: each member's
own accuracy minus its mean pair loss with the others; a group already scored counts its exact
accuracies (recorded here with :meth:`Neighbourhood.record`), a single domain its own adapter's.

Only numbers and names in and out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from search.plan.partition import Group, Partition, make_partition

KINDS = ("move", "split", "swap", "merge")  # the order of a neighbourhood's flat candidate index
NEAR = 1e-9  # gains this close to the best are ranked again by the planner, on each partition


class PairLosses:
    """What sharing a body cost each ordered pair of domains, kept as scored groups arrive.

    ``matrix()`` is :meth:`search.plan.planner.PlanSearch._pair_losses` as an N x N array: the
    mean of ``d``'s own accuracy minus its accuracy over the scored groups that hold ``d`` and
    ``e``, and for a pair not seen yet the mean of the pairs seen (0 before any group)."""

    def __init__(self, domains: Sequence[str], singles: Mapping[str, float]) -> None:
        self.index = {d: i for i, d in enumerate(domains)}
        self.singles = singles
        n = len(domains)
        self.sums, self.counts = np.zeros((n, n)), np.zeros((n, n))

    def add(self, group: Group, accuracies: Mapping[str, float]) -> None:
        for d in group:
            loss = self.singles[d] - accuracies[d]
            for e in group:
                if e != d:
                    self.sums[self.index[d], self.index[e]] += loss
                    self.counts[self.index[d], self.index[e]] += 1

    def matrix(self) -> np.ndarray:
        seen = self.counts > 0
        means = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=seen)
        unknown = means[seen].mean() if seen.any() else 0.0
        out = np.where(seen, means, unknown)
        np.fill_diagonal(out, 0.0)
        return out


@dataclass(frozen=True)
class Candidate:
    """A neighbour whose expected gain is within :data:`NEAR` of the best of its plan's."""

    partition: Partition
    move: str
    new_groups: int
    flat: int  # its cell in the neighbourhood's flat index


class Neighbourhood:
    """Every neighbour of one plan, as arrays over (kind, cells); see the module docstring.

    Args:
        plan: the partition (every group of two or more scored).
        domains: every domain, in the order of the matrices' rows.
        singles: each domain's own accuracy.
        group_terms: each group of ``plan`` -> the sum of its members' exact accuracies.
    """

    def __init__(self, *, plan: Partition, domains: Sequence[str], singles: Mapping[str, float],
                 group_terms: Sequence[float]) -> None:
        self.plan = plan
        self.domains = tuple(domains)
        self.index = {d: i for i, d in enumerate(self.domains)}
        n, g = len(self.domains), len(plan)
        self.n, self.g = n, g
        self.grp = np.empty(n, dtype=np.int64)
        for k, group in enumerate(plan):
            for d in group:
                self.grp[self.index[d]] = k
        self.size = np.bincount(self.grp, minlength=g).astype(float)
        self.single = np.array([float(singles[d]) for d in self.domains])
        self.single_sum = np.bincount(self.grp, weights=self.single, minlength=g)
        self.term = np.asarray(group_terms, dtype=float)
        # the exact terms of neighbour groups already scored (NaN: not scored, use the estimate)
        self.exact_less = np.full(n, np.nan)  # group of d less d
        self.exact_plus = np.full((n, g), np.nan)  # group k plus d
        self.exact_traded = np.full((n, n), np.nan)  # group of a, a traded for b
        self.exact_merged = np.full((g, g), np.nan)  # groups i and k (i < k)
        self.sizes = self._sizes()
        self.valid = np.concatenate([
            ((self.size[self.grp] >= 2)[:, None] & (np.arange(g)[None, :] != self.grp[:, None])).ravel(),
            self.size[self.grp] >= 2,
            ((self.grp[:, None] < self.grp[None, :])
             & ~((self.size[self.grp] == 1)[:, None] & (self.size[self.grp] == 1)[None, :])).ravel(),
            (np.arange(g)[:, None] < np.arange(g)[None, :]).ravel()])
        self.blocked = np.zeros_like(self.valid)
        self.bounds = np.cumsum([0, n * g, n, n * n, g * g])
        self._kept: tuple | None = None  # (version, gains, new groups, affordable) of the last look
        self._partitions: dict[int, Partition] = {}
        self._new: np.ndarray | None = None  # new group evaluations per neighbour, until a record
        # what no pair loss changes: each new group's singles and 1 / (size - 1), the plan's terms they replace
        grp, single, t = self.grp, self.single, self.term
        self.order = np.argsort(grp, kind="stable")
        self.starts = np.searchsorted(grp[self.order], np.arange(g))
        s = self.sizes
        # 1 / (size - 1) of each new group, as small as it broadcasts (plus: per group, traded: per row)
        inv = {"less": 1.0 / np.maximum(s["less"] - 1, 1), "plus": 1.0 / np.maximum(self.size[None, :], 1),
               "traded": 1.0 / np.maximum(self.size[grp][:, None] - 1, 1),
               "merged": 1.0 / np.maximum(s["merged"] - 1, 1)}
        own_single = self.single_sum[grp]
        self.static = {
            "less": (own_single - single, inv["less"]),
            "plus": (self.single_sum[None, :] + single[:, None], inv["plus"]),
            "traded": (own_single[:, None] - single[:, None] + single[None, :], inv["traded"]),
            "merged": (self.single_sum[:, None] + self.single_sum[None, :], inv["merged"])}
        self.replaced = {"move": t[grp][:, None] + t[None, :], "split": t[grp],
                         "swap": t[grp][:, None] + t[grp][None, :], "merge": t[:, None] + t[None, :]}

    # -- the sizes of every neighbour's new groups -------------------------------------------
    def _sizes(self) -> dict[str, np.ndarray]:
        own = self.size[self.grp]
        return {"less": own - 1, "plus": np.broadcast_to(self.size[None, :] + 1, (self.n, self.g)),
                "traded": np.broadcast_to(own[:, None], (self.n, self.n)),
                "merged": self.size[:, None] + self.size[None, :]}

    def _changes(self, losses: np.ndarray) -> np.ndarray:
        """Every neighbour's change of the plan's sum of estimate terms, flat in :data:`KINDS` order.

        With ``pairs = losses + losses.T``, a group's pair loss sum is half the sum of ``pairs``
        over its members, and its term ``members' singles - pair loss sum / (size - 1)`` (its
        single for one domain; the exact sum for a group scored)."""
        n, g, grp = self.n, self.g, self.grp
        pairs = losses + losses.T
        per_group = np.add.reduceat(pairs[:, self.order], self.starts, axis=1)  # each domain with each group
        with_own = per_group[np.arange(n), grp]
        own = 0.5 * np.bincount(grp, weights=with_own, minlength=g)  # each group's pair loss sum

        def term(name, pair_sum, exact):
            singles, inv = self.static[name]
            pair_sum *= inv
            estimate = np.subtract(singles, pair_sum, out=pair_sum)
            return np.where(np.isnan(exact), estimate, exact)

        less_sum = own[grp] - with_own
        less = term("less", less_sum.copy(), self.exact_less)
        plus = term("plus", own[None, :] + per_group, self.exact_plus)
        traded_sum = per_group.T[grp]
        traded_sum += less_sum[:, None]
        traded_sum -= pairs
        traded = term("traded", traded_sum, self.exact_traded)
        between = np.add.reduceat(per_group[self.order], self.starts, axis=0)
        between += own[:, None]
        between += own[None, :]
        merged = term("merged", between, self.exact_merged)
        out = np.empty(self.bounds[-1])
        lo = self.bounds
        moves = out[lo[0]:lo[1]].reshape(n, g)
        np.add(less[:, None], plus, out=moves)
        moves -= self.replaced["move"]
        np.add(less, self.single, out=out[lo[1]:lo[2]])
        out[lo[1]:lo[2]] -= self.replaced["split"]
        swaps = out[lo[2]:lo[3]].reshape(n, n)
        np.add(traded, traded.T, out=swaps)
        swaps -= self.replaced["swap"]
        np.subtract(merged, self.replaced["merge"], out=out[lo[3]:lo[4]].reshape(g, g))
        return out

    def _new_groups(self) -> np.ndarray:
        if self._new is None:
            s = self.sizes
            less = (s["less"] >= 2) & np.isnan(self.exact_less)
            plus = np.isnan(self.exact_plus)
            traded = (s["traded"] >= 2) & np.isnan(self.exact_traded)
            merged = np.isnan(self.exact_merged)
            self._new = np.concatenate([(less[:, None].astype(int) + plus).ravel(), less.astype(int),
                                        (traded.astype(int) + traded.T).ravel(), merged.astype(int).ravel()])
        return self._new

    # -- what the planner tells it ------------------------------------------------------------
    def record(self, group: Group, exact: float) -> None:
        """``group`` (two or more domains) is scored, its members' accuracies summing to ``exact``:
        every neighbour that makes it counts that instead of an estimate."""
        members = [self.index[d] for d in group]
        counts = Counter(int(self.grp[m]) for m in members)
        size = self.size
        if len(counts) == 1:
            (k, c), = counts.items()
            if c == size[k] - 1:  # group k less one domain
                (d,) = set(np.flatnonzero(self.grp == k)) - set(members)
                self.exact_less[d] = exact
                self._kept = self._new = None
            return
        if len(counts) != 2:
            return
        (i, ci), (k, ck) = counts.items()
        for (i, ci), (k, ck) in (((i, ci), (k, ck)), ((k, ck), (i, ci))):
            if ck == size[k] and ci == 1:  # group k plus one domain of group i
                (d,) = [m for m in members if self.grp[m] == i]
                self.exact_plus[d, k] = exact
            if ci == size[i] - 1 and ck == 1:  # group i with one domain traded for one of group k
                (a,) = set(np.flatnonzero(self.grp == i)) - set(members)
                (b,) = [m for m in members if self.grp[m] == k]
                self.exact_traded[a, b] = exact
        if ci == size[i] and ck == size[k]:
            self.exact_merged[min(i, k), max(i, k)] = exact
        self._kept = self._new = None

    def block(self, flat: int) -> None:
        """The neighbour at ``flat`` is tried: never offer it again."""
        self.blocked[flat] = True

    def best(self, *, losses: np.ndarray, version: int, offsets: Mapping[str, float],
             remaining: int) -> list[Candidate]:
        """The untried neighbours the remaining budget pays for whose expected gain is within
        :data:`NEAR` of the best one's (empty when none is left): the planner ranks these few again,
        each on its partition, so that rounding in these sums never decides between near equals.

        ``losses``: :meth:`PairLosses.matrix`, ``version`` changing whenever it does (the arrays
        are kept while it and ``offsets`` do not change: a neighbour tried since costs no more
        than a new look at them); ``offsets``: per kind, this plan's value minus the value of the
        best plan of the neighbour's number of bodies (0 for move and swap)."""
        key = (version, tuple(sorted(offsets.items())), remaining)
        if self._kept is None or self._kept[0] != key:
            gain = self._changes(losses) / self.n
            for kind, lo, hi in zip(KINDS, self.bounds[:-1], self.bounds[1:]):
                gain[lo:hi] += offsets.get(kind, 0.0)
            new = self._new_groups()
            self._kept = (key, gain, new, self.valid & (new <= remaining))
        _, gain, new, affordable = self._kept
        open_ = affordable & ~self.blocked
        if not open_.any():
            return []
        near = np.flatnonzero(open_ & (gain >= gain[open_].max() - NEAR))
        kinds = np.searchsorted(self.bounds, near, side="right") - 1
        return [Candidate(partition=self.partition_at(int(flat)), move=KINDS[kind], new_groups=int(new[flat]),
                          flat=int(flat)) for flat, kind in zip(near, kinds)]

    def partition_at(self, flat: int) -> Partition:
        """The neighbour at ``flat`` of the flat index (:data:`KINDS` order)."""
        found = self._partitions.get(flat)
        if found is None:
            found = self._partitions[flat] = self._build(flat)
        return found

    def _build(self, flat: int) -> Partition:
        n, g, groups, names = self.n, self.g, list(self.plan), self.domains
        if flat < n * g:
            d, k = divmod(flat, g)
            i, name = int(self.grp[d]), names[d]
            return make_partition([tuple(x for x in groups[i] if x != name), groups[k] + (name,),
                                   *(h for m, h in enumerate(groups) if m not in (i, k))])
        flat -= n * g
        if flat < n:
            i, name = int(self.grp[flat]), names[flat]
            return make_partition([tuple(x for x in groups[i] if x != name), (name,),
                                   *(h for m, h in enumerate(groups) if m != i)])
        flat -= n
        if flat < n * n:
            a, b = divmod(flat, n)
            i, k = int(self.grp[a]), int(self.grp[b])
            return make_partition([tuple(x for x in groups[i] if x != names[a]) + (names[b],),
                                   tuple(x for x in groups[k] if x != names[b]) + (names[a],),
                                   *(h for m, h in enumerate(groups) if m not in (i, k))])
        i, k = divmod(flat - n * n, g)
        return make_partition([groups[i] + groups[k], *(h for m, h in enumerate(groups) if m not in (i, k))])
