"""MLflow tracking: the layout of DESIGN.md, written from the driver only.

- one experiment per config name;
- training: one run per domain adapter (``signmix.kind = training``);
- search: one parent run per search, one child run per proposed mixture, tagged
  ``signmix.status`` (``evaluated`` | ``filtered`` | ``stopped_early`` | ``failed``) and
  ``signmix.mixture_key``. A mixture proposed twice has one run, not two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping

from mlflow_server.network import sqlite_path
from mlflow_server.server import redact_uri
from search.tracking.layout import (
    DOMAIN_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FILTER_REASON_TAG,
    KEY_TAG,
    KIND_TAG,
    MIXTURE_ARTIFACT,
    NOTE_TAG,
    PARENT_TAG,
    STATUS_TAG,
    STATUSES,
    STRATEGY_TAG,
    TRIAL_TAG,
    logged_value,
    spec_params,
)
from search.tracking.mlflow_client import make_client
from spaces.errors import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from search.settings.config import Config

    from spaces.spec import MixtureSpec

logger = logging.getLogger(__name__)

_TERMINAL = {"evaluated": "FINISHED", "filtered": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where a local store keeps artifacts: beside the SQLite file, not in the cwd."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.parent / "mlartifacts").resolve().as_uri()


def experiment_description(cfg: Config) -> str:
    """What an experiment of ``cfg`` holds, for MLflow's description of it: name, domains, store."""
    return (f"signmix experiment **{cfg.name}**: domains {', '.join(sorted(cfg.domains))}; adapter store "
            f"`{cfg.store_path}`; base model `{cfg.base_model}` ({cfg.adapter.method} adapters). Runs: "
            "`train-<domain>` per adapter, `search-...` per search (its mixtures nested under it), "
            "`plan-...` per serving plan (its `plan-group ...` searches nested under it).")


def open_experiment(tracking_uri: str, name: str, *, description: str | None = None) -> tuple[MlflowClient, str]:
    """The MLflow client and the id of experiment ``name`` (created when missing).

    An experiment created here, or first written to by signmix, gets MLflow's experiment kind
    (its UI then opens on the runs table, not on the GenAI overview) and ``description`` when
    it has none; a description the user wrote stays."""
    from mlflow.exceptions import MlflowException

    if sqlite_path(tracking_uri) is not None:
        sqlite_path(tracking_uri).parent.mkdir(parents=True, exist_ok=True)
    client = make_client(tracking_uri)
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            experiment_id = client.create_experiment(name, artifact_location=artifact_root_for(tracking_uri))
            tags = {}
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            experiment_id, tags = exp.experiment_id, exp.tags
        if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if description and not tags.get(NOTE_TAG):
            client.set_experiment_tag(experiment_id, NOTE_TAG, description)
        return client, experiment_id
    except MlflowException as exc:
        raise TrackingError(f"the MLflow tracking store {_redact(tracking_uri)} cannot be used: "
                            f"{str(exc).splitlines()[0]}; check mlflow.tracking_uri") from exc


def open_config_experiment(cfg: Config) -> tuple[MlflowClient, str]:
    """:func:`open_experiment` of ``cfg``'s tracking store and experiment, described."""
    return open_experiment(cfg.tracking_uri, cfg.experiment_name, description=experiment_description(cfg))


def _redact(uri: str) -> str:

    return redact_uri(uri)


def _timed(method):
    """Adds the method's wall time to ``self.seconds`` (what MLflow logging costs a search)."""
    import functools
    import time

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    return wrapper


class SearchTracker:
    """One search's parent run and its child runs, keyed by mixture key."""

    seconds = 0.0  # time spent in the MLflow calls below

    def __init__(self, *, tracking_uri: str, experiment: str, strategy: str, measure: str,
                 description: str | None = None) -> None:
        self.client, self.experiment_id = open_experiment(tracking_uri, experiment, description=description)
        self.strategy, self.measure = strategy, measure
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # mixture key -> child run id
        self.status: dict[str, str] = {}  # mixture key -> status

    def start(self, *, params: Mapping[str, object], run_name: str, tags: Mapping[str, str] | None = None) -> str:
        """Create the search's run (``tags``: more, e.g. ``mlflow.parentRunId`` of a plan's group search)."""
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={KIND_TAG: "search", STRATEGY_TAG: self.strategy, **(tags or {})})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=_params(params))
        return self.parent_id

    def _child(self, spec: MixtureSpec, fsd: float, tags: Mapping[str, str]) -> str:
        """The mixture's run, created on first sight: two MLflow calls, or one to update its tags.

        ``create_run`` carries the tags, one ``log_batch`` the parameters and the FSD. A crash
        between the two leaves a run without parameters, which :meth:`reload` deletes."""
        from mlflow.entities import Metric, RunTag

        key = spec.key
        if key in self.runs:
            self.client.log_batch(self.runs[key], tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = self._create(spec, tags)
            self.client.log_batch(run_id, params=self._params_of(spec), metrics=[Metric("fsd", logged_value("fsd", fsd), _now_ms(), 0)])
        self.status[key] = tags[STATUS_TAG]
        return self.runs[key]

    def _create(self, spec: MixtureSpec, tags: Mapping[str, str]) -> str:
        """A new child run for ``spec`` (no parameters yet: the caller's next call logs them)."""
        run = self.client.create_run(self.experiment_id, run_name=spec.label(), tags={
            PARENT_TAG: self.parent_id, KIND_TAG: "mixture", KEY_TAG: spec.key, **tags})
        self.runs[spec.key] = run.info.run_id
        return run.info.run_id

    def _params_of(self, spec: MixtureSpec) -> list:
        return _params(spec_params(spec, strategy=self.strategy, measure=self.measure))

    @_timed
    def record_filtered(self, spec: MixtureSpec, fsd: float, reason: str) -> None:
        """A proposal the pre-filter rejected: recorded, never run."""
        if spec.key in self.runs:
            return
        run_id = self._child(spec, fsd, {STATUS_TAG: "filtered", FILTER_REASON_TAG: reason})
        self.client.set_terminated(run_id, "FINISHED")

    @_timed
    def start_mixture(self, spec: MixtureSpec, fsd: float, trial_id: str) -> str:
        return self._child(spec, fsd, {STATUS_TAG: "running", TRIAL_TAG: trial_id})

    @_timed
    def log_progress(self, spec: MixtureSpec, metrics: Mapping[str, float], step: int) -> None:
        self._log(self.runs[spec.key], metrics, step)

    def _log(self, run_id: str, metrics: Mapping[str, float], step: int, tags: Mapping[str, str] | None = None,
             params: list | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, logged_value(k, v), ts, step) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()], params=params or [])

    @_timed
    def finish_mixture(self, spec: MixtureSpec, status: str, *, metrics: Mapping[str, float] | None = None,
                       step: int = 0, artifact_dir: str | None = None, error: str | None = None,
                       fsd: float = float("nan"), trial_id: str | None = None) -> None:
        """The mixture's outcome: its artifacts first, then metrics and status in one batch, then its end.

        A mixture without a run (a batch's, recorded once evaluated; one whose trial never
        started) gets its run here, its parameters and ``fsd`` in that one batch: three calls.
        A crash before the batch leaves a run without parameters, which :meth:`reload` deletes;
        one within it, a run still "running", which :meth:`close_dangling` fails."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        tags = {STATUS_TAG: status, **({ERROR_TAG: error[:5000]} if error else {})}
        params, metrics = [], dict(metrics or {})
        if spec.key in self.runs:
            run_id = self.runs[spec.key]
        else:
            # "running" until the batch below: MLflow writes a batch's parameters, metrics and
            # tags one after the other, so the status must come with the last of them, or a
            # crash in between leaves an "evaluated" run without its metrics.
            run_id = self._create(spec, {STATUS_TAG: "running", **({TRIAL_TAG: trial_id} if trial_id else {})})
            params = self._params_of(spec)
            metrics.setdefault("fsd", float(fsd))
        if artifact_dir is not None:
            self.client.log_artifacts(run_id, artifact_dir, MIXTURE_ARTIFACT)
        self._log(run_id, metrics, step, tags, params)
        self.status[spec.key] = status
        self.client.set_terminated(run_id, _TERMINAL[status])

    def attach(self, parent_run_id: str) -> None:
        """Continue the search recorded under ``parent_run_id`` (a resumed search)."""
        self.parent_id = parent_run_id
        self.client.update_run(parent_run_id, status="RUNNING")
        self.reload()

    def children(self, status: str | None = None, *, running: bool = False) -> list:
        """This search's mixture runs (of one status; ``running``: only those MLflow still has running)."""
        where = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{KIND_TAG}` = 'mixture'"
        if status:
            where += f" and tags.`{STATUS_TAG}` = '{status}'"
        if running:
            where += " and attributes.status = 'RUNNING'"
        return self.client.search_runs([self.experiment_id], filter_string=where, max_results=50000)

    def reload(self) -> dict[str, tuple[str, dict[str, float], list[str]]]:
        """Re-read this search's child runs from MLflow; returns key -> (status, metrics, members).

        A run without parameters is what a crash between its two first calls leaves: it
        records nothing, so it is deleted, and the mixture gets a whole run if proposed again."""
        found = {}
        for run in self.children():
            key = run.data.tags[KEY_TAG]
            if not run.data.params:
                self.client.delete_run(run.info.run_id)
                continue
            self.runs[key] = run.info.run_id
            self.status[key] = run.data.tags.get(STATUS_TAG, "running")
            found[key] = (self.status[key], dict(run.data.metrics), run.data.params["members"].split(","))
        return found

    def close_dangling(self) -> int:
        """End the child runs still RUNNING at the end of a search; returns how many failed.

        Only a crash leaves one. A run whose outcome was recorded (its status tag) lost only
        its end: it ends as that outcome says. The others were in flight when the driver
        died and the resumed search did not run them again (its budget was spent first):
        they are failed."""
        failed = 0
        for run in self.children(running=True):  # not every run: a search may have tens of thousands
            status = run.data.tags.get(STATUS_TAG)
            if status in _TERMINAL:
                self.client.set_terminated(run.info.run_id, _TERMINAL[status])
                continue
            self._log(run.info.run_id, {}, 0, {
                STATUS_TAG: "failed", ERROR_TAG: "interrupted: the driver stopped while this mixture was "
                "evaluated, and the resumed search did not run it again"})
            self.client.set_terminated(run.info.run_id, "KILLED")
            failed += 1
        return failed

    def end(self, *, summary: Mapping[str, float], failed: bool = False, stopped: bool = False) -> None:
        """Log ``summary`` on the parent run and end it: FAILED, KILLED (``stopped``: Ctrl-C,
        SIGTERM, a stopped Ray Job; ``--resume`` continues it) or FINISHED."""
        if self.parent_id is None:
            return
        from mlflow.entities import Metric

        ts = _now_ms()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, logged_value(k, v), ts, 0) for k, v in summary.items()])
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "KILLED" if stopped else "FINISHED")


def _params(params: Mapping[str, object]) -> list:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in params.items()]


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested config as MLflow parameters."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_training_run(client: MlflowClient, experiment_id: str, *, domain: str, params: Mapping[str, object]) -> str:
    """Start the training run of one domain adapter; returns its id."""
    run = client.create_run(experiment_id, run_name=f"train-{domain}",
                            tags={KIND_TAG: "training", DOMAIN_TAG: domain})
    client.log_batch(run.info.run_id, params=_params(params))
    return run.info.run_id

