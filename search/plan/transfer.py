"""What a plan's body searches learn from one another: which operator choices served the groups so far.

Every group's body is searched over the same operator choices (``search.merge_methods`` with
their densities, drop rates and lambdas), a few evaluations each. Searched apart, every group
starts from nothing: on the 12 real review domains each of 21 groups evaluated the same four
choices (the same seeded start), the same one won in 16 of them, and five of the nine choices
were never tried in any group. Searched together, a new group's search first evaluates the
choices with the lowest mean regret over the groups searched so far (regret: the group's best
mean accuracy minus the choice's) and one choice tried least so far, so that every choice is
tried somewhere; the rest of its budget is the strategy's own.

Pure: operator choices are plain dicts (``MergeChoices.operator_choices``), results plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

Choice = Mapping[str, object]


def choice_key(choice: Choice) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in choice.items()))


def describe_choice(choice: Choice) -> str:
    """``ties density 0.2 lambda 1.5``: an operator choice for people."""
    return " ".join([str(choice["merge_method"]), *(f"{k} {v}" for k, v in choice.items() if k != "merge_method")])


@dataclass
class OperatorRecord:
    """Each operator choice's regrets in the groups searched so far."""

    choices: Sequence[Choice]  # every choice a group's search may evaluate, in the config's order
    regrets: dict[tuple, list[float]] = field(default_factory=dict)

    def add(self, results: Sequence[tuple[Choice, float]]) -> None:
        """One group's search: each evaluated mixture's operator choice and mean accuracy."""
        if not results:
            return
        best: dict[tuple, float] = {}
        for choice, accuracy in results:  # a choice evaluated twice (other weights): its best
            key = choice_key(choice)
            best[key] = max(best.get(key, float("-inf")), float(accuracy))
        top = max(best.values())
        for key, accuracy in best.items():
            self.regrets.setdefault(key, []).append(top - accuracy)

    def mean_regret(self, choice: Choice) -> float | None:
        seen = self.regrets.get(choice_key(choice))
        return sum(seen) / len(seen) if seen else None

    def table(self) -> list[dict]:
        """Each choice tried so far: how many groups tried it and its mean regret, lowest first."""
        rows = [{"choice": describe_choice(c), "groups": len(self.regrets[choice_key(c)]),
                 "mean_regret": self.mean_regret(c)} for c in self.choices if choice_key(c) in self.regrets]
        return sorted(rows, key=lambda r: (r["mean_regret"], -r["groups"]))

    def first(self, n: int) -> list[dict]:
        """The choices a new group's search evaluates first, at most ``n``: the ``n - 1`` (at least one)
        with the lowest mean regret so far (among equals the most tried, then the config's order),
        then the least tried of the others (the config's order among equals). Empty before any
        group was searched: the first group's search is the strategy's own."""
        if not self.regrets or n < 1:
            return []
        order = {choice_key(c): i for i, c in enumerate(self.choices)}
        tried = [c for c in self.choices if self.mean_regret(c) is not None]
        tried.sort(key=lambda c: (self.mean_regret(c), -len(self.regrets[choice_key(c)]), order[choice_key(c)]))
        exploit = tried[:max(1, n - 1)]
        rest = [c for c in self.choices if choice_key(c) not in {choice_key(e) for e in exploit}]
        rest.sort(key=lambda c: (len(self.regrets.get(choice_key(c), [])), order[choice_key(c)]))
        return [dict(c) for c in [*exploit, *rest][:n]]
