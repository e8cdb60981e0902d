"""The experiment's mixtures as read back from MLflow, and the table of the best ones.

Reads only; never creates an experiment or a run. :mod:`search.reporting.report` draws its figures
from the same records (:class:`MixtureRun`), so the table and the figures agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from mlflow_server.network import sqlite_path
from search.reporting.tables import format_table
from search.tracking.layout import KEY_TAG, KIND_TAG, PARENT_TAG, STATUS_TAG
from search.tracking.mlflow_client import make_client
from spaces.errors import TrackingError, UsageError

if TYPE_CHECKING:
    from search.config import Config



@dataclass(frozen=True)
class MixtureRun:
    """One child run of a search or study: what was mixed, how it scored, when it ended."""

    run_id: str
    parent_id: str | None
    members: tuple[str, ...]
    targets: tuple[str, ...]
    prune_method: str
    prune_ratio: float
    status: str
    strategy: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    end_time: int | None = None

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def pruning(self) -> str:
        return "dense" if self.prune_method == "none" or self.prune_ratio == 0 else \
            f"{self.prune_method} {self.prune_ratio:g}"

    def accuracy(self, target: str) -> float | None:
        return self.metrics.get(f"accuracy/{target}")

    @classmethod
    def from_mlflow(cls, run) -> MixtureRun:
        p, tags = run.data.params, run.data.tags
        split = lambda s: tuple(x for x in (s or "").split(",") if x)  # noqa: E731
        return cls(run_id=run.info.run_id, parent_id=tags.get(PARENT_TAG), members=tuple(sorted(split(p.get("members")))),
                   targets=split(p.get("targets")), prune_method=p.get("prune_method", "none"),
                   prune_ratio=float(p.get("prune_ratio") or 0.0), status=tags.get(STATUS_TAG, "running"),
                   strategy=p.get("strategy", ""), metrics=dict(run.data.metrics), tags=dict(tags),
                   start_time=run.info.start_time or 0, end_time=run.info.end_time)


def open_existing_experiment(cfg: Config):
    """The MLflow client and the id of the config's experiment, or ``None`` when there is none yet.

    A local SQLite store that does not exist is not created (reading must not write)."""

    uri = cfg.tracking_uri
    if sqlite_path(uri) is not None and not sqlite_path(uri).is_file():
        return None, None
    client = make_client(uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is None or exp.lifecycle_stage == "deleted":
        return client, None
    return client, exp.experiment_id


def search_parents(client, experiment_id: str) -> list:
    """The search and study parent runs of an experiment, newest first."""
    return client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=50000)


def mixture_runs(client, experiment_id: str, *, status: str | None = None,
                 parent_id: str | None = None) -> list[MixtureRun]:
    """Every mixture run of the experiment (optionally of one status, or of one parent)."""
    where = f"tags.`{KIND_TAG}` = 'mixture'"
    if status:
        where += f" and tags.`{STATUS_TAG}` = '{status}'"
    if parent_id:
        where += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    runs = client.search_runs([experiment_id], filter_string=where, max_results=50000)
    return [MixtureRun.from_mlflow(r) for r in runs]


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
