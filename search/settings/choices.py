"""The names of the choices a config makes that are implemented above the settings.

The settings are the bottom layer of ``search/``: the config validates these names without
importing what implements them (an arrow up). Where they are implemented:

- ``STRATEGY_NAMES``: :data:`search.proposals.strategies.STRATEGIES`, a registry that checks when
  it is imported that it holds exactly these names (:func:`check_registry`);
- ``TIE_RULES``: :func:`search.workflows.confirmation_decision.tie_rule_choice`
  (``search.when_tied``);
- ``COMPATIBILITY_MEASURES``: :func:`search.plan.serving_plan.plan_distances` over
  :mod:`search.plan.compatibility` (``plan.compatibility``).

The choices implemented in ``spaces/`` and ``trainables/`` (operators, measures, prune methods)
are imported from their registries directly: those packages sit below ``search/``.
"""

from __future__ import annotations

from typing import Iterable

# search.strategy: who proposes the next mixture.
STRATEGY_NAMES = ("tpe", "random", "exhaustive", "greedy_fsd", "soup_all")
# search.when_tied: which of two mixtures tied on validation is exported.
TIE_RULES = ("fewer_members", "higher_accuracy")
# plan.compatibility: the pairwise distance a plan starts from (activation_fsd, the default, predicts).
COMPATIBILITY_MEASURES = ("activation_fsd", "cross_heads", "fsd")


def check_registry(field: str, names: tuple[str, ...], registered: Iterable[str]) -> None:
    """Raises RuntimeError when a registry does not implement exactly the names the config accepts."""
    registered = tuple(registered)
    if set(registered) != set(names):
        raise RuntimeError(f"{field}: the config accepts {sorted(names)} but the registry implements "
                           f"{sorted(registered)}; add the name to search/settings/choices.py and the registry together")
