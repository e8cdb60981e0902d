"""What proposes mixtures once a study is too long for TPE: mutations of the best ones found.

TPE models every finished Optuna trial at each ask, and Optuna itself scans the whole study
at every ask (for enqueued trials, for the sampler's history), so an ask grows with the
study: 31 ms at 3,000 trials on 2 cores, and a search makes about 2.5 Optuna trials per
evaluated mixture (repeats and filtered proposals are trials too). NSGA-II, tried first,
paid the same scans (the driver fell from 11 to 4 mixtures per second past the switch;
BENCHMARKS.md, "Driver scale"). :class:`EliteMutation` keeps what it needs in memory, the
best mixtures and the keys of every proposal, so an ask costs the same at any length: a
(mu + lambda) evolution strategy in the space's own parameters
(:meth:`spaces.space.MixtureSpace.mutate_params`).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Iterable, Mapping

from spaces.errors import SpecError

if TYPE_CHECKING:
    from spaces.space import MixtureSpace

# The best mixtures the mutations start from.
ELITE_SIZE = 50
# Mutations tried for an unseen proposal before one is proposed again anyway.
TRIES = 50
# Tokens of this strategy's proposals start here, far above any Optuna trial number.
TOKEN_BASE = 1 << 40


def _key(params: Mapping) -> tuple:
    return tuple(sorted(params.items(), key=lambda kv: kv[0]))


class EliteMutation:
    """Proposes a mutation of one of the ``ELITE_SIZE`` best evaluated mixtures, chosen at
    random (seeded), preferring mixtures never proposed; learns from every evaluation.

    Args:
        space: the searched space.
        elite: ``(value, params)`` of evaluated mixtures to start from (any number, any order).
        seen: the parameter dicts proposed so far (repeats are not proposed again while an
            unseen mutation can be found).
        seed: seeds the choices, so that a search is reproducible.
    """

    def __init__(self, *, space: MixtureSpace, elite: Iterable[tuple[float, dict]],
                 seen: Iterable[Mapping] = (), seed: int = 0) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.elite: dict[tuple, tuple[float, dict]] = {}
        for value, params in elite:
            self._admit(value, params)
        self.seen = {_key(p) for p in seen}
        self.asked: dict[int, dict] = {}
        self.next_token = TOKEN_BASE

    def owns(self, token: int) -> bool:
        return token >= TOKEN_BASE

    def ask(self) -> tuple[int, dict] | None:
        if not self.elite:
            params = self.space.random_params(self.rng)
        else:
            params = self._mutation()
        self.seen.add(_key(params))
        token, self.next_token = self.next_token, self.next_token + 1
        self.asked[token] = params
        return token, params

    def _mutation(self) -> dict:
        parents = list(self.elite.values())
        candidate = None
        for _ in range(TRIES):
            _, parent = parents[self.rng.randrange(len(parents))]
            child = self.space.mutate_params(parent, self.rng)
            try:
                self.space.to_mixture_spec(child)
            except SpecError:  # an empty subset, say
                continue
            candidate = child
            if _key(child) not in self.seen:
                return child
        # Late in a search the best mixtures' neighbours are all known: a random unseen
        # mixture, else a known one (the searcher answers it from its result).
        for _ in range(TRIES):
            params = self.space.random_params(self.rng)
            if _key(params) not in self.seen:
                return params
        return candidate if candidate is not None else self.space.random_params(self.rng)

    def tell(self, token: int, outcome: str, value=None) -> None:
        params = self.asked.pop(token, None)
        if params is not None and outcome == "evaluated" and value is not None:
            self._admit(value[0] if isinstance(value, (list, tuple)) else value, params)

    def _admit(self, value: float, params: dict) -> None:
        key = _key(params)
        if key in self.elite or value != value:  # known already, or NaN
            return
        self.elite[key] = (float(value), dict(params))
        if len(self.elite) > ELITE_SIZE:
            worst = min(self.elite, key=lambda k: self.elite[k][0])
            del self.elite[worst]

    def pending(self) -> dict[int, dict]:
        return dict(self.asked)
