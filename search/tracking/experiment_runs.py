"""An experiment's runs as read back from MLflow: the mixture runs and the search parents.

Reads only; never creates an experiment or a run. The gates (their evidence), the confirmation and
the reports (:mod:`search.reporting`) read the same records (:class:`MixtureRun`), so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow_server.network import sqlite_path
from search.tracking.layout import KEY_TAG, KIND_TAG, PARENT_TAG, STATUS_TAG
from search.tracking.mlflow_client import make_client

if TYPE_CHECKING:
    from search.settings.config import Config


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


def evaluated_mixture_run(client, experiment_id: str, key: str, *, parent_id: str | None = None):
    """The first evaluated mixture run of the experiment (of search ``parent_id`` when given) whose
    mixture key is ``key``; None when there is none."""
    where = f"tags.`{KEY_TAG}` = '{key}' and tags.`{STATUS_TAG}` = 'evaluated' and tags.`{KIND_TAG}` = 'mixture'"
    if parent_id:
        where += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    hits = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                              filter_string=where)
    return hits[0] if hits else None


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
