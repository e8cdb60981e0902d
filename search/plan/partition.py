"""Partitions of domains into groups, the agglomerative start, and the moves between partitions.

A group is a sorted tuple of domain names; a partition is a sorted tuple of disjoint groups
that together hold every domain once. Both are plain tuples, so they hash, compare and
print the same way everywhere (cache keys, MLflow parameters, ``plan.json``).

Distances are a symmetric mapping ``{(a, b): d}`` over domain pairs (either order), smaller
meaning "more likely to share a body well" (:mod:`search.plan.compatibility` builds them).
Only numbers and names in and out: no models, no Ray, no MLflow.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Mapping, Sequence

Group = tuple[str, ...]
Partition = tuple[Group, ...]
Distances = Mapping[tuple[str, str], float]

MOVES = ("move", "swap", "split", "merge")


def make_partition(groups: Iterable[Iterable[str]]) -> Partition:
    """The canonical partition of ``groups``: each group sorted, the groups sorted.

    Raises:
        ValueError: a group is empty, or a domain is in two groups.
    """
    canon = [tuple(sorted(g)) for g in groups]
    if any(not g for g in canon):
        raise ValueError(f"a partition's groups must be non-empty, got {canon}")
    seen = [d for g in canon for d in g]
    if len(seen) != len(set(seen)):
        raise ValueError(f"a domain may be in one group only, got {canon}")
    return tuple(sorted(canon))


def domains_of(partition: Partition) -> tuple[str, ...]:
    """Every domain of ``partition``, sorted."""
    return tuple(sorted(d for g in partition for d in g))


def distance(distances: Distances, a: str, b: str) -> float:
    """The distance of ``a`` and ``b`` in either order (0 for a domain and itself)."""
    if a == b:
        return 0.0
    if (a, b) in distances:
        return float(distances[(a, b)])
    if (b, a) in distances:
        return float(distances[(b, a)])
    raise KeyError(f"no distance between {a!r} and {b!r}")


def linkage(distances: Distances, left: Sequence[str], right: Sequence[str]) -> float:
    """Average linkage: the mean distance over every pair with one domain in each group."""
    return sum(distance(distances, a, b) for a in left for b in right) / (len(left) * len(right))


def spread(distances: Distances, partition: Partition) -> float:
    """How far apart the domains that share a body are: the sum over groups of their mean
    within-group distance, weighted by group size (0 for singletons). Orders candidate moves."""
    total = 0.0
    for g in partition:
        if len(g) > 1:
            pairs = list(itertools.combinations(g, 2))
            total += len(g) * sum(distance(distances, a, b) for a, b in pairs) / len(pairs)
    return total


def agglomerative(domains: Sequence[str], distances: Distances) -> list[Partition]:
    """Average-linkage agglomerative clustering: the partition at every number of groups,
    from one group per domain (G = N) down to one group (G = 1), in that order.

    Ties are broken by the groups' names, so the result depends only on the inputs.
    """
    if len(set(domains)) != len(domains) or not domains:
        raise ValueError(f"domains must be distinct and non-empty, got {list(domains)}")
    groups: list[Group] = [(d,) for d in sorted(domains)]
    out = [make_partition(groups)]
    while len(groups) > 1:
        _, i, j = min((linkage(distances, a, b), i, j) for (i, a), (j, b)
                      in itertools.combinations(enumerate(groups), 2))
        merged = tuple(sorted(groups[i] + groups[j]))
        groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [merged]
        out.append(make_partition(groups))
    return out


def neighbours(partition: Partition) -> Iterator[tuple[str, Partition]]:
    """Every partition one move away, as ``(move, partition)``; moves are :data:`MOVES`:

    - ``move``: one domain leaves its group (of two or more) for another group (same G);
    - ``swap``: two domains of different groups trade places (same G);
    - ``split``: one domain leaves its group to be served by its own adapter (G + 1);
    - ``merge``: two groups become one (G - 1).
    """
    groups = list(partition)
    seen: set[Partition] = {partition}

    def fresh(move: str, new: Iterable[Iterable[str]]):
        p = make_partition(new)
        if p not in seen:
            seen.add(p)
            yield move, p

    for i, g in enumerate(groups):
        if len(g) < 2:
            continue
        for d in g:
            rest = tuple(x for x in g if x != d)
            others = [h for k, h in enumerate(groups) if k != i]
            for k, h in enumerate(others):
                yield from fresh("move", [rest, h + (d,), *(o for m, o in enumerate(others) if m != k)])
            yield from fresh("split", [rest, (d,), *others])
    for (i, g), (j, h) in itertools.combinations(enumerate(groups), 2):
        others = [o for k, o in enumerate(groups) if k not in (i, j)]
        for a in g:
            for b in h:
                if len(g) == 1 and len(h) == 1:
                    continue  # two singletons trading places is the same partition
                yield from fresh("swap", [tuple(x for x in g if x != a) + (b,),
                                          tuple(x for x in h if x != b) + (a,), *others])
        yield from fresh("merge", [g + h, *others])
