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


def top_mixtures(cfg: Config, n: int = 10, sort: str = "accuracy_mean",
                 targets: Sequence[str] | None = None) -> list[dict]:
    """The ``n`` best evaluated mixtures of each target set across the experiment (every search,
    study and plan group), or of the target set ``targets`` only.

    A mean over targets is only comparable between mixtures of the same targets (a plan's group
    mixture for electronics+support is not better than a books mixture because its mean is higher):
    rows come grouped by target set, the groups in the order of their best row. Within a group,
    ordered by the metric ``sort``: highest first (lowest first for FSD metrics and times); among
    equals the fewest members, then the earliest. Runs without the metric are left out.

    Raises:
        UsageError: ``n`` < 1, no evaluated mixture has the metric ``sort``, or none has ``targets``.
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
    if targets:
        wanted = target_set(targets)
        known = sorted({target_set(r.targets) for r in scored})
        scored = [r for r in scored if target_set(r.targets) == wanted]
        if not scored:
            raise UsageError(f"--targets {','.join(wanted)}: no evaluated mixture has exactly these targets with the "
                             f"metric {sort!r}; the target sets are {', '.join(','.join(t) for t in known)}")
    sign = 1.0 if lower_is_better(sort) else -1.0
    scored.sort(key=lambda r: (sign * r.metrics[sort], r.k, r.start_time))
    groups: dict[tuple[str, ...], list[MixtureRun]] = {}
    for r in scored:  # insertion order: the target sets in the order of their best mixture
        groups.setdefault(target_set(r.targets), []).append(r)
    return [_row(r) for runs in groups.values() for r in runs[:n]]


def target_set(targets: Sequence[str]) -> tuple[str, ...]:
    """A mixture's targets as the key it is ranked under: sorted, without repeats."""
    return tuple(sorted(set(targets)))


def _row(run: MixtureRun) -> dict:
    return {
        "members": list(run.members), "k": run.k, "targets": list(run.targets),
        "prune_method": run.prune_method, "prune_ratio": run.prune_ratio, "pruning": run.pruning,
        "fsd": run.metrics.get("fsd"), "metrics": dict(sorted(run.metrics.items())),
        "status": run.status, "strategy": run.strategy, "run_id": run.run_id, "parent_run_id": run.parent_id,
        "mixture_key": run.tags.get(KEY_TAG),
    }


def format_results(rows: Sequence[dict], sort: str = "accuracy_mean") -> str:
    """Text tables of :func:`top_mixtures` rows: one per target set, headed by it, best first."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in rows:
        groups.setdefault(target_set(r["targets"]), []).append(r)
    parts = []
    for targets, group in groups.items():
        head = f"targets {'+'.join(targets)}"
        if len(groups) > 1:
            head += f" ({sort} ranks mixtures of these targets only; `--targets {','.join(targets)}` shows them alone)"
        parts.append(f"{head}\n{_table(group, sort)}")
    return "\n\n".join(parts)


def _table(rows: Sequence[dict], sort: str) -> str:

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
