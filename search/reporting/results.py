"""The table of an experiment's best mixtures (``signmix results``).

Reads only, from the records of :mod:`search.tracking.experiment_runs`, as the report's figures do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from search.tracking.tables import format_table
from search.tracking.layout import KEY_TAG
from search.tracking.experiment_runs import MixtureRun, mixture_runs, open_existing_experiment
from spaces.errors import TrackingError, UsageError

if TYPE_CHECKING:
    from search.settings.config import Config


def lower_is_better(metric: str) -> bool:
    """FSD (sign conflict), times and the black-box attack's success are better small; accuracies
    (robust ones too), F1, sparsity and the queries or words an attack needs big."""
    return metric.startswith(("fsd", "bb_attack_success")) or metric.endswith("seconds")


def top_mixtures(cfg: Config, n: int = 10, sort: str = "accuracy_mean") -> list[dict]:
    """The ``n`` best evaluated mixtures across the experiment (every search and study).

    Ordered by the metric ``sort``: highest first (lowest first for FSD metrics and
    times); among equals the fewest members, then the earliest. Runs without the
    metric are left out.

    Raises:
        UsageError: ``n`` < 1, or no evaluated mixture has the metric ``sort``.
        TrackingError: the experiment has no evaluated mixture yet.
    """
    if n < 1:
        raise UsageError(f"--top must be at least 1, got {n}")
    client, experiment_id = open_existing_experiment(cfg)
    runs = mixture_runs(client, experiment_id, status="evaluated") if experiment_id else []
    if not runs:
        raise TrackingError(f"the experiment {cfg.experiment_name!r} has no evaluated mixture yet; "
                            "run `signmix search CONFIG` first")
    scored = [r for r in runs if sort in r.metrics and not math.isnan(r.metrics[sort])]
    if not scored:
        known = sorted({m for r in runs for m in r.metrics})
        raise UsageError(f"no evaluated mixture has the metric {sort!r}; sort by one of {known}")
    sign = 1.0 if lower_is_better(sort) else -1.0
    scored.sort(key=lambda r: (sign * r.metrics[sort], r.k, r.start_time))
    return [_row(r) for r in scored[:n]]


def _row(run: MixtureRun) -> dict:
    return {
        "members": list(run.members), "k": run.k, "targets": list(run.targets),
        "prune_method": run.prune_method, "prune_ratio": run.prune_ratio, "pruning": run.pruning,
        "fsd": run.metrics.get("fsd"), "metrics": dict(sorted(run.metrics.items())),
        "status": run.status, "strategy": run.strategy, "run_id": run.run_id, "parent_run_id": run.parent_id,
        "mixture_key": run.tags.get(KEY_TAG),
    }


def format_results(rows: Sequence[dict], sort: str = "accuracy_mean") -> str:
    """A text table of :func:`top_mixtures` rows: one line per mixture, best first."""

    def num(value):
        return "-" if value is None else float(value)

    extra = [] if sort in ("accuracy_mean", "fsd") else [sort]
    table = []
    for i, r in enumerate(rows, 1):
        m = r["metrics"]
        per_target = " ".join(f"{t}={m[f'accuracy/{t}']:.4f}" for t in r["targets"] if f"accuracy/{t}" in m)
        table.append([i, "+".join(r["members"]), r["k"], r["pruning"], num(r["fsd"]), num(m.get("accuracy_mean")),
                      *[num(m.get(x)) for x in extra], per_target or "-", r["status"], r["run_id"]])
    return format_table(table, ["#", "members", "k", "pruning", "FSD", "accuracy_mean", *extra,
                                "accuracy per target", "status", "run id"])
