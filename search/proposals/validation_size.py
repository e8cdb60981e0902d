"""How many validation examples each search target has, and whether they can tell mixtures apart."""

from __future__ import annotations

from typing import Mapping

from search.settings.config import Config
from trainables.data import load_domain
from trainables.significance import examples_for, half_width_for


def validation_sizes(cfg: Config) -> dict[str, int]:
    """Number of validation examples each search target is evaluated on (after ``max_eval_examples``)."""
    sizes = {}
    for t in cfg.search.targets:
        data = load_domain(t, cfg.domains[t], splits=("validation",),
                           max_eval_examples=cfg.training.max_eval_examples, seed=cfg.training.seed,
                           trust_remote_code=cfg.trust_remote_code)
        sizes[t] = len(data.splits["validation"])
    return sizes


def small_validation_warnings(sizes: Mapping[str, int], max_half_width: float) -> list[str]:
    """One warning per target whose 95% validation interval is wider than ``±max_half_width``."""
    out = []
    for t, n in sizes.items():
        hw = half_width_for(max(1, n))
        if hw > max_half_width:
            needed = examples_for(max_half_width)
            out.append(f"target {t}: {n} validation examples give a 95% interval of about ±{hw:.3f} "
                       f"(search.max_interval_half_width {max_half_width:g}); mixtures closer than that "
                       f"cannot be told apart; about {needed} examples would be needed")
    return out
