"""What is searched: subsets of domains and how to prune them, under constraints.

A sampled parameter dict looks like ``{"use.books": True, "use.dvd": False, ...,
"prune_ratio": 0.5}``, with ``"prune_method"`` when more than one pruning method is a
choice and ``"prune_layers"`` (Alg. 4's m) when ``conflict_layers`` is one of several
choices of m, and the merge dimensions of :mod:`spaces.merge_dimensions` (operator, its
parameters, ``"weight.<domain>"``). :meth:`MixtureSpace.distributions` gives them as Optuna
distributions. :meth:`MixtureSpace.to_mixture_spec` is the one function that
turns it into a :class:`MixtureSpec`; the pre-filter (:meth:`MixtureSpace.check`) and the
trial both start from its result, so they can never disagree about what was proposed.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal, Mapping, Protocol, Sequence

from spaces.errors import SpecError
from spaces.merge_dimensions import MERGE_METHOD_PARAM, MergeChoices
from spaces.operators import DEFAULT_HEAD_PROTOCOL, HEAD_PROTOCOLS
from spaces.spec import PRUNE_METHODS, MixtureSpec, make_mixture_spec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from spaces.fsd import SignIndex

USE_PREFIX = "use."
PRUNE_PARAM = "prune_ratio"
PRUNE_METHOD_PARAM = "prune_method"
PRUNE_LAYERS_PARAM = "prune_layers"
SEARCH_PRUNE_METHODS = tuple(m for m in PRUNE_METHODS if m != "none")  # what a search may choose between


@dataclass(frozen=True)
class Verdict:
    """The pre-filter's decision on one proposal."""

    accepted: bool
    fsd: float
    reason: str = ""
    violation: float = 0.0  # > 0 when rejected: how far over the limit (what Optuna learns from)


@dataclass(frozen=True)
class MixtureSpace:
    """The subsets and pruning choices a search may propose, and the constraints on them.

    ``prune_methods`` are the methods used for a positive ratio (a ratio of 0.0 is one
    unpruned mixture whatever the method); ``prune_layers`` are the choices of m for
    ``conflict_layers``. ``merge`` says how members are merged (operators, their parameters,
    weights); ``head`` which heads score a mixture (``spaces.operators.HEAD_PROTOCOLS``).
    """

    domains: tuple[str, ...]
    targets: tuple[str, ...]
    prune_ratios: tuple[float, ...] = (0.0,)
    prune_methods: tuple[str, ...] = ("magnitude",)
    prune_layers: tuple[int, ...] = (2,)
    prune_scope: str = "adapter"
    prune_when: str = "members"
    require_targets: bool = True
    max_members: int | None = None
    max_fsd: float | None = None  # resolved: a number or None (no FSD limit)
    fsd_measure: str = "mean_pairwise"
    merge: MergeChoices = MergeChoices()
    head: str = DEFAULT_HEAD_PROTOCOL

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(sorted(self.domains)))
        object.__setattr__(self, "targets", tuple(sorted(self.targets)))
        object.__setattr__(self, "prune_ratios", tuple(sorted(set(self.prune_ratios))))
        # A target that is no member (a data-only domain, require_targets off) needs no adapter.
        unknown = [t for t in self.targets if t not in self.domains] if self.require_targets else []
        if unknown:
            raise SpecError(f"targets {unknown} are not domains; the domains are {list(self.domains)}")
        if not self.prune_ratios:
            raise SpecError("give at least one pruning ratio (0.0 means no pruning)")
        # Order kept (the first is the default), repeats dropped.
        object.__setattr__(self, "prune_methods", tuple(dict.fromkeys(self.prune_methods)))
        object.__setattr__(self, "prune_layers", tuple(sorted(set(self.prune_layers))))
        bad = [m for m in self.prune_methods if m not in SEARCH_PRUNE_METHODS]
        if bad or not self.prune_methods:
            raise SpecError(f"prune_methods must be a non-empty list of {list(SEARCH_PRUNE_METHODS)}, "
                            f"got {list(self.prune_methods)}")
        if not self.prune_layers or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                        for m in self.prune_layers):
            raise SpecError(f"prune_layers must be a non-empty list of integers >= 1, got {list(self.prune_layers)}")
        if self.head not in HEAD_PROTOCOLS:
            raise SpecError(f"head must be one of {list(HEAD_PROTOCOLS)}, got {self.head!r}")

    @property
    def _method_is_searched(self) -> bool:
        return len(self.prune_methods) > 1

    @property
    def _layers_are_searched(self) -> bool:
        return "conflict_layers" in self.prune_methods and len(self.prune_layers) > 1

    @property
    def free_domains(self) -> tuple[str, ...]:
        """The domains whose membership is searched (targets are always in when required)."""
        if self.require_targets:
            return tuple(d for d in self.domains if d not in self.targets)
        return self.domains

    def names_no_member(self, params: Mapping) -> bool:
        """Whether ``params`` leave every domain out where no target is a required member: a
        proposal a sampler may make (TPE samples each membership on its own), no mixture."""
        return not self.require_targets and not any(params.get(USE_PREFIX + d, False) for d in self.free_domains)

    def to_mixture_spec(self, params: Mapping) -> MixtureSpec:
        """The validated mixture a sampled parameter dict stands for.

        Raises:
            SpecError: the params name an unknown domain, an empty subset, or a ratio,
                method or m that is not one of the space's choices.
        """
        named = {PRUNE_PARAM, PRUNE_METHOD_PARAM, PRUNE_LAYERS_PARAM, *self.merge.names(self.domains)}
        unknown = [k for k in params if k not in named and
                   (not k.startswith(USE_PREFIX) or k[len(USE_PREFIX):] not in self.domains)]
        if unknown:
            raise SpecError(f"unknown search parameters {unknown}; expected 'use.<domain>' for "
                            f"{list(self.domains)}, or one of {sorted(named)}")
        members = [d for d in self.free_domains if params.get(USE_PREFIX + d, False)]
        if self.require_targets:
            members = list(self.targets) + members
        asked = float(params.get(PRUNE_PARAM, self.prune_ratios[0]))
        # Snap to the choice itself, so that 0.9 and 0.9 + 1e-12 are one mixture (one key).
        ratio = next((r for r in self.prune_ratios if math.isclose(asked, r)), None)
        if ratio is None:
            raise SpecError(f"prune_ratio {asked} is not one of the choices {list(self.prune_ratios)}")
        method = params.get(PRUNE_METHOD_PARAM, self.prune_methods[0])
        if method not in self.prune_methods:
            raise SpecError(f"prune_method {method!r} is not one of the choices {list(self.prune_methods)}")
        m = params.get(PRUNE_LAYERS_PARAM, self.prune_layers[0])
        if m not in self.prune_layers:
            raise SpecError(f"prune_layers {m!r} is not one of the choices {list(self.prune_layers)}")
        return make_mixture_spec(
            members=members, targets=self.targets, prune_method=method if ratio > 0 else "none",
            prune_ratio=ratio, prune_scope=self.prune_scope, prune_when=self.prune_when,
            prune_layers=int(m) if method == "conflict_layers" else 0,
            known_domains=(*self.domains, *self.targets), require_targets=self.require_targets, head=self.head,
            **self.merge.spec_arguments(params, members))

    def params_for(self, members: Sequence[str], prune_ratio: float | None = None,
                   prune_method: str | None = None, prune_layers: int | None = None,
                   merge: Mapping | None = None, weights: Mapping[str, float] | None = None) -> dict:
        """The parameter dict that :meth:`to_mixture_spec` maps to these members, pruning and merge.

        ``prune_method`` and ``prune_layers`` default to the first choice (as does a
        method of ``"none"`` or an m of 0, what an unpruned spec holds); they appear in the
        dict only when the space searches over them. ``merge`` (an operator choice, see
        :meth:`MergeChoices.params_for`) defaults to the first operator with its first
        parameter values, ``weights`` to equal weights: the greedy warm start and the soup of
        all use these defaults.
        """
        params: dict = {USE_PREFIX + d: d in members for d in self.free_domains}
        params[PRUNE_PARAM] = self.prune_ratios[0] if prune_ratio is None else prune_ratio
        if self._method_is_searched:
            params[PRUNE_METHOD_PARAM] = prune_method if prune_method not in (None, "none") \
                else self.prune_methods[0]
        if self._layers_are_searched:
            params[PRUNE_LAYERS_PARAM] = prune_layers if prune_layers else self.prune_layers[0]
        params.update(self.merge.params_for(self.domains, merge, weights))
        return params

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distributions sampled for every proposal: membership, pruning, operator, weights.

        Pruning method and m are sampled whenever they are searched, even with a ratio of 0.0
        (where they change nothing): a fixed search space is what multivariate TPE models best.
        The chosen operator's own parameters follow from :meth:`conditional_distributions`.
        """
        from optuna.distributions import CategoricalDistribution

        out: dict = {USE_PREFIX + d: CategoricalDistribution([False, True]) for d in self.free_domains}
        if len(self.prune_ratios) > 1:
            out[PRUNE_PARAM] = CategoricalDistribution(list(self.prune_ratios))
        if self._method_is_searched:
            out[PRUNE_METHOD_PARAM] = CategoricalDistribution(list(self.prune_methods))
        if self._layers_are_searched:
            out[PRUNE_LAYERS_PARAM] = CategoricalDistribution(list(self.prune_layers))
        out.update(self.merge.distributions(self.domains))
        return out

    def conditional_distributions(self, params: Mapping) -> dict[str, BaseDistribution]:
        """The distributions that depend on what ``params`` already chose: the operator's parameters
        (density for ties, drop_rate for dare_*, lambda for every operator but average)."""
        return self.merge.operator_distributions(params.get(MERGE_METHOD_PARAM, self.merge.merge_methods[0]))

    def _pruning_choices(self) -> list[tuple[float, str | None, int | None]]:
        """Every distinct ``(ratio, method, m)``: one unpruned choice for a ratio of 0.0."""
        choices: list[tuple[float, str | None, int | None]] = []
        for ratio in self.prune_ratios:
            if ratio == 0.0:
                choices.append((ratio, None, None))
                continue
            for method in self.prune_methods:
                if method == "conflict_layers":
                    choices.extend((ratio, method, m) for m in self.prune_layers)
                else:
                    choices.append((ratio, method, None))
        return choices

    def enumerate(self) -> Iterator[dict]:
        """Every parameter dict of the space, smallest subsets first (empty subsets skipped)."""
        free = self.free_domains
        for size in range(0, len(free) + 1):
            for chosen in itertools.combinations(free, size):
                if not self.require_targets and not chosen:
                    continue
                members = (tuple(self.targets) if self.require_targets else ()) + chosen
                for ratio, method, m in self._pruning_choices():
                    for merge in self.merge.operator_choices():
                        for weights in self.merge.weight_choices(members):
                            yield self.params_for(chosen, ratio, method, m, merge, weights)

    def random_params(self, rng: random.Random) -> dict:
        """A parameter dict drawn at random: each free domain in or out with probability
        1/2 (never an empty subset), then one of the pruning choices, one operator choice
        and (when searched) one weight per member from the grid."""
        while True:
            chosen = [d for d in self.free_domains if rng.random() < 0.5]
            if chosen or self.require_targets:
                members = (list(self.targets) if self.require_targets else []) + chosen
                weights = ({d: rng.choice(self.merge.weight_grid()) for d in members}
                           if self.merge.searched_weights else None)
                return self.params_for(chosen, *rng.choice(self._pruning_choices()),
                                       rng.choice(self.merge.operator_choices()), weights)

    def mutate_params(self, params: Mapping, rng: random.Random) -> dict:
        """A neighbour of ``params``: each sampled parameter redrawn to another of its choices
        with probability 1/n (at least one of the n is), then the chosen operator's own
        parameters kept where they still apply and drawn where they are new. May name an
        empty subset where targets are not required: :meth:`to_mixture_spec` refuses it."""
        dists = self.distributions()
        names = list(dists)
        out = {name: params[name] for name in names if name in params}
        for name in [n for n in names if rng.random() < 1 / len(names)] or [rng.choice(names)]:
            others = [c for c in dists[name].choices if c != out.get(name)]
            if others:
                out[name] = rng.choice(others)
        for name, dist in self.conditional_distributions(out).items():
            out[name] = params[name] if params.get(name) in dist.choices else rng.choice(list(dist.choices))
        return out

    def size(self) -> int:
        """How many distinct parameter dicts :meth:`enumerate` yields: subsets (x their weightings
        when weights are searched) x (1 for a ratio of 0.0 + positive ratios x (other methods +
        choices of m)) x operator choices. With searched weights, weightings that are multiples
        of one another are one mixture, and operator choices may merge alike (task arithmetic at
        λ 1 is the average: ``spaces/canonical.py``): there may be fewer distinct mixtures than dicts."""
        fixed = len(self.targets) if self.require_targets else 0
        free = len(self.free_domains)
        subsets = sum(math.comb(free, n) * self.merge.weightings(fixed + n)
                      for n in range(free + 1) if fixed + n > 0)
        positive = sum(1 for r in self.prune_ratios if r > 0)
        per_ratio = sum(len(self.prune_layers) if method == "conflict_layers" else 1
                        for method in self.prune_methods)
        pruning = (len(self.prune_ratios) - positive) + positive * per_ratio
        return subsets * pruning * len(self.merge.operator_choices())

    def check(self, spec: MixtureSpec, index: SignIndex) -> Verdict:
        """The sign-conflict pre-filter and the size constraint: run the mixture or not?"""
        fsd = index.subset_fsd(spec.members, self.fsd_measure)
        if self.max_members is not None and spec.k > self.max_members:
            return Verdict(False, fsd, f"{spec.k} members > max_members={self.max_members}",
                           violation=float(spec.k - self.max_members))
        if self.max_fsd is not None and fsd > self.max_fsd:
            return Verdict(False, fsd, f"{self.fsd_measure} FSD {fsd:.4f} > max_fsd {self.max_fsd:.4f}",
                           violation=fsd - self.max_fsd)
        return Verdict(True, fsd)


AUTO_SAMPLE = 2048  # member sets drawn for ``max_fsd: auto`` when the space holds more


def conflict_candidates(space: MixtureSpace, *, limit: int = AUTO_SAMPLE, seed: int = 0) -> list[tuple[str, ...]]:
    """The member sets of ``space`` that can conflict (two members or more, within
    ``max_members``): all of them, or ``limit`` distinct ones drawn at random (seeded)."""
    free, fixed = space.free_domains, tuple(space.targets) if space.require_targets else ()
    cap = space.max_members or len(space.domains)
    # Uniform over the allowed sets: a size in proportion to how many sets it has, then a
    # uniform choice of that many free domains.
    sizes = [n for n in range(len(free) + 1) if 2 <= len(fixed) + n <= cap]
    total = sum(math.comb(len(free), n) for n in sizes)
    if total <= limit:
        return [fixed + c for n in sizes for c in itertools.combinations(free, n)]
    rng, drawn = random.Random(seed), set()
    weights = [math.comb(len(free), n) for n in sizes]
    while len(drawn) < limit:
        n = rng.choices(sizes, weights)[0]
        drawn.add(fixed + tuple(sorted(rng.sample(free, n), key=free.index)))
    return sorted(drawn)


def auto_max_fsd(space: MixtureSpace, index: SignIndex, percentile: float) -> float | None:
    """``max_fsd: auto``: the ``percentile`` of the FSDs (in the space's measure) of the
    member sets the space can propose, so that about ``100 - percentile`` % of them are
    filtered. None (filter nothing) when no proposal can have two members.

    A percentile of the *pairwise* FSDs filtered almost nothing: a subset's mean FSD is
    pulled towards the middle by its low-conflict pairs (BENCHMARKS.md, benchmark 3).
    """
    import numpy as np

    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    fsds = [index.subset_fsd(members, space.fsd_measure) for members in conflict_candidates(space)]
    return float(np.percentile(fsds, percentile)) if fsds else None


class SearchSettings(Protocol):
    """What :func:`space_from_config` reads of the config's ``search:`` section (its
    ``SearchConfig``, which states every default; ``spaces`` does not import the search)."""

    targets: Sequence[str]
    prune_ratios: Sequence[float]
    prune_methods: Sequence[str]
    prune_layers: Sequence[int]
    prune_scope: str
    prune_when: str
    require_targets: bool
    max_members: int | None
    fsd_measure: str
    merge_methods: Sequence[str]
    densities: Sequence[float]
    drop_rates: Sequence[float]
    lambdas: Sequence[float]
    weights: str
    seed: int
    head: str


def space_from_config(search: SearchSettings, domains: Sequence[str], *, targets: Sequence[str] | None = None,
                      max_members: int | None | Literal["config"] = "config") -> MixtureSpace:
    """The :class:`MixtureSpace` a ``search:`` section describes over ``domains``.

    ``targets`` and ``max_members`` replace the section's (the confirmation's greedy
    baseline walks the whole space). The space filters nothing on FSD: ``search.max_fsd``
    (fixed, auto or off) is the FSD gate's alone (``search/proposals/fsd_gate.py``).
    """
    return MixtureSpace(
        domains=tuple(domains), targets=tuple(targets or search.targets),
        prune_ratios=tuple(search.prune_ratios), prune_methods=tuple(search.prune_methods),
        prune_layers=tuple(search.prune_layers), prune_scope=search.prune_scope, prune_when=search.prune_when,
        require_targets=search.require_targets,
        max_members=search.max_members if max_members == "config" else max_members,
        max_fsd=None, fsd_measure=search.fsd_measure,
        merge=MergeChoices(merge_methods=tuple(search.merge_methods), densities=tuple(search.densities),
                           drop_rates=tuple(search.drop_rates), lambdas=tuple(search.lambdas),
                           weights=search.weights, merge_seed=search.seed),
        head=search.head)
