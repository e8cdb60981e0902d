"""``MixtureSpec``: the one validated description of a mixture that every stage shares."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from spaces.canonical import canonical_merge
from spaces.errors import SpecError
from spaces.operators import DEFAULT_HEAD_PROTOCOL, DEFAULT_MERGE_OPERATOR, HEAD_PROTOCOLS, operator_parameters

# The registries of pruning: how (method), over what (scope) and when; every other list
# of these names (config, search space, mixing, messages) is derived from them.
PRUNE_METHODS: tuple[str, ...] = ("none", "magnitude", "conflict_layers")
PRUNE_SCOPES: tuple[str, ...] = ("adapter", "layer")
PRUNE_WHEN: tuple[str, ...] = ("members", "mixture")

PruneMethod = Literal[PRUNE_METHODS]
PruneScope = Literal[PRUNE_SCOPES]
PruneWhen = Literal[PRUNE_WHEN]


@dataclass(frozen=True)
class MixtureSpec:
    """A mixture: which adapters to average, with which weights, and how to prune.

    ``members`` are sorted domain names; ``weights`` (same order) sum to 1. ``targets`` are
    the domains the mixture is evaluated on, each with its own head. A ratio of 0.0 means
    no pruning. ``prune_layers`` is the number m of most sign-conflicting layers that
    ``"conflict_layers"`` prunes (the paper's Alg. 4), 0 for every other method. Build one
    with :func:`make_mixture_spec`, which validates and canonicalises.
    """

    members: tuple[str, ...]
    weights: tuple[float, ...]
    targets: tuple[str, ...]
    prune_method: PruneMethod = "none"
    prune_ratio: float = 0.0
    prune_scope: PruneScope = "adapter"
    prune_when: PruneWhen = "members"
    prune_layers: int = 0
    # How the members are merged (spaces.operators.MERGE_OPERATORS) with the parameters that
    # operator takes (None where it takes none), and which heads score the mixture.
    merge_method: str = DEFAULT_MERGE_OPERATOR
    density: float | None = None
    drop_rate: float | None = None
    lam: float | None = None
    merge_seed: int | None = None
    head: str = DEFAULT_HEAD_PROTOCOL

    @property
    def k(self) -> int:
        """The number of mixed adapters."""
        return len(self.members)

    @property
    def is_uniform(self) -> bool:
        return all(abs(w - 1.0 / self.k) < 1e-12 for w in self.weights)

    def canonical(self) -> dict:
        """The spec as a plain dict, without fields that do not change the mixture."""
        d = asdict(self)
        d["members"] = list(self.members)
        d["targets"] = list(self.targets)
        d["weights"] = [round(w, 12) for w in self.weights]
        if self.prune_method == "none" or self.prune_ratio == 0.0:
            d.update(prune_method="none", prune_ratio=0.0, prune_scope="adapter", prune_when="members")
        if d["prune_method"] != "conflict_layers":
            # Absent rather than 0, so that the keys of mixtures made before conflict_layers
            # existed (recorded in MLflow, matched on resume) do not change.
            d.pop("prune_layers")
        # Operator, its parameters and head protocol: only what changes the mixture, and absent
        # at their defaults (average, own), so that the keys of older mixtures do not change.
        for name in ("merge_method", "density", "drop_rate", "lam", "merge_seed", "head"):
            if d[name] is None:
                d.pop(name)
        if self.merge_method == DEFAULT_MERGE_OPERATOR:
            d.pop("merge_method")
        if self.head == DEFAULT_HEAD_PROTOCOL:
            d.pop("head")
        return d

    @property
    def merge_parameters(self) -> dict:
        """The keyword arguments of ``trainables.merging.merge_adapters`` for this mixture's operator."""
        return {"density": self.density, "drop_rate": self.drop_rate, "lam": self.lam, "merge_seed": self.merge_seed}

    @property
    def key(self) -> str:
        """A stable hash of the canonical spec: equal mixtures have equal keys."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        """A short human-readable name, e.g. ``books+dvd @ magnitude 0.9``,
        ``books+dvd @ conflict_layers 0.9 m=2`` or ``books×0.67+dvd×0.33 ties d=0.5 λ=1 [refit]``."""
        if self.is_uniform:
            name = "+".join(self.members)
        else:
            name = "+".join(f"{m}×{w:.2g}" for m, w in zip(self.members, self.weights))
        if self.merge_method != DEFAULT_MERGE_OPERATOR:
            name += f" {self.merge_method}"
            shown = (("d", self.density), ("p", self.drop_rate), ("λ", self.lam))
            name += "".join(f" {short}={value:g}" for short, value in shown if value is not None)
            if self.merge_seed:
                name += f" seed={self.merge_seed}"
        if self.prune_method != "none" and self.prune_ratio > 0:
            name += f" @ {self.prune_method} {self.prune_ratio:g}"
            if self.prune_method == "conflict_layers":
                name += f" m={self.prune_layers}"
        if self.head != DEFAULT_HEAD_PROTOCOL:
            name += f" [{self.head}]"
        return name

    def to_dict(self) -> dict:
        """A JSON-safe dict that :meth:`from_dict` reads back (what travels to Ray trials)."""
        return self.canonical()

    @classmethod
    def from_dict(cls, d: dict) -> MixtureSpec:
        # "targets must be members" is a search-space choice checked when the spec was made,
        # not a property of the spec: a mixture made with require_targets=False reads back too.
        return make_mixture_spec(**{"require_targets": False, **d})


def make_mixture_spec(
    *,
    members,
    targets,
    weights=None,
    prune_method: str = "none",
    prune_ratio: float = 0.0,
    prune_scope: str = "adapter",
    prune_when: str = "members",
    prune_layers: int = 0,
    merge_method: str = DEFAULT_MERGE_OPERATOR,
    density: float | None = None,
    drop_rate: float | None = None,
    lam: float | None = None,
    merge_seed: int | None = None,
    head: str = DEFAULT_HEAD_PROTOCOL,
    known_domains=None,
    require_targets: bool = True,
) -> MixtureSpec:
    """Validate and canonicalise a mixture; returns a :class:`MixtureSpec`.

    Args:
        members: domain names to mix (any order, no repeats).
        targets: domains to evaluate on.
        weights: mixing weights, a list aligned with ``members`` or a dict by name;
            uniform when omitted. Normalised to sum to 1.
        prune_method / prune_ratio / prune_scope / prune_when: see ``trainables.mix_and_prune``.
            ``prune_ratio`` is in [0, 1]; 1.0 zeroes every pruned weight (sparsity sweeps).
        prune_layers: m, the number of most sign-conflicting layers pruned by
            ``"conflict_layers"`` (at least 1 there); set to 0 for every other method.
            ``"conflict_layers"`` always prunes the members layer by layer, so its
            ``prune_scope``/``prune_when`` are set to ``"layer"``/``"members"``.
        merge_method: one of ``spaces.operators.MERGE_OPERATORS``. Its parameters (``density``,
            ``drop_rate``, ``lam``, ``merge_seed``: DARE's seed) are kept only where the operator
            takes them, others are dropped; ``lam`` defaults to 1.0 and ``merge_seed`` to 0 there,
            ``density`` (ties) and ``drop_rate`` (dare_*) are required. The operator is
            rewritten into its canonical form when another one provably merges the same
            (``spaces.canonical``: task arithmetic at λ 1 is the average, ...).
        head: the head protocol, one of ``spaces.operators.HEAD_PROTOCOLS``.
        known_domains: when given, every member and target must be one of them.
        require_targets: every target must be a member (the paper's in-domain setting).

    Raises:
        SpecError: naming the bad value and what is allowed.
    """
    members = list(members)
    targets = list(targets)
    if not members:
        raise SpecError("a mixture needs at least one member, got an empty subset")
    if not targets:
        raise SpecError("a mixture needs at least one target domain to be evaluated on")
    if len(set(members)) != len(members):
        raise SpecError(f"mixture members must be distinct, got {members}")
    if known_domains is not None:
        known = set(known_domains)
        for name in members + targets:
            if name not in known:
                raise SpecError(f"unknown domain {name!r}; the domains are {sorted(known)}")
    if require_targets:
        missing = [t for t in targets if t not in members]
        if missing:
            raise SpecError(f"targets {missing} are not members of the mixture {sorted(members)}; "
                            "a target's own adapter is always mixed (set search.require_targets: false to allow this)")
    if weights is None:
        weights = [1.0] * len(members)
    elif isinstance(weights, dict):
        unknown = set(weights) - set(members)
        if unknown:
            raise SpecError(f"weights given for non-members {sorted(unknown)}")
        weights = [float(weights.get(m, 0.0)) for m in members]
    weights = [float(w) for w in weights]
    if len(weights) != len(members):
        raise SpecError(f"got {len(weights)} weights for {len(members)} members")
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise SpecError(f"weights must be non-negative with a positive sum, got {weights}")
    if prune_method not in PRUNE_METHODS:
        raise SpecError(f"prune_method must be one of {list(PRUNE_METHODS)}, got {prune_method!r}")
    if prune_scope not in PRUNE_SCOPES:
        raise SpecError(f"prune_scope must be one of {list(PRUNE_SCOPES)}, got {prune_scope!r}")
    if prune_when not in PRUNE_WHEN:
        raise SpecError(f"prune_when must be one of {list(PRUNE_WHEN)}, got {prune_when!r}")
    prune_ratio = float(prune_ratio)
    if not 0.0 <= prune_ratio <= 1.0:
        raise SpecError(f"prune_ratio must be in [0, 1], got {prune_ratio}")
    if prune_method == "none" or prune_ratio == 0.0:
        # Nothing is pruned: one canonical form, so equal mixtures compare equal.
        prune_method, prune_ratio, prune_scope, prune_when = "none", 0.0, "adapter", "members"
    if prune_method == "conflict_layers":
        if isinstance(prune_layers, bool) or not isinstance(prune_layers, int) or prune_layers < 1:
            raise SpecError(f"prune_layers must be an integer >= 1 for prune_method 'conflict_layers', "
                            f"got {prune_layers!r}")
        # Alg. 4 prunes chosen layers of every member: scope and timing are fixed by the method.
        prune_scope, prune_when = "layer", "members"
    else:
        prune_layers = 0

    kept = operator_parameters(merge_method, {"density": density, "drop_rate": drop_rate, "lam": lam,
                                              "merge_seed": merge_seed})
    if head not in HEAD_PROTOCOLS:
        raise SpecError(f"head must be one of {list(HEAD_PROTOCOLS)}, got {head!r}")
    # One name per merged function (task arithmetic at λ 1 is the average, ...): a repeat is one mixture.
    merge_method, kept = canonical_merge(merge_method, kept, len(members))

    total = sum(weights)
    order = sorted(range(len(members)), key=lambda i: members[i])
    return MixtureSpec(
        members=tuple(members[i] for i in order),
        weights=tuple(weights[i] / total for i in order),
        targets=tuple(sorted(targets)),
        prune_method=prune_method,  # type: ignore[arg-type]
        prune_ratio=prune_ratio,
        prune_scope=prune_scope,  # type: ignore[arg-type]
        prune_when=prune_when,  # type: ignore[arg-type]
        prune_layers=int(prune_layers),
        merge_method=merge_method,
        density=kept.get("density"),
        drop_rate=kept.get("drop_rate"),
        lam=kept.get("lam"),
        merge_seed=kept.get("merge_seed"),
        head=head,
    )
