"""Ray Tune callbacks: MLflow runs and progress lines, from trial events in the driver."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ray.tune import Callback

from search.tracking.outcomes import METRIC, trial_outcome
from search.tracking.layout import ADAPTER_PATH_TAG, ERROR_TAG
from search.tracking.tracker import log_training_run

if TYPE_CHECKING:
    from search.proposals.searcher import SignConflictSearcher
    from search.tracking.tracker import SearchTracker
    from spaces.spec import MixtureSpec

logger = logging.getLogger(__name__)

# What a trial reports that is not a metric of the mixture.
_NOT_METRICS = {"done", "training_iteration", "trial_id", "time_this_iter_s", "time_total_s", "pid",
                "timestamp", "date", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
                "checkpoint_dir_name", "should_checkpoint", "config", "experiment_tag", "adapter_path",
                "batch_index"}


def numeric_metrics(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MixtureTracking(Callback):
    """Opens, updates and closes the MLflow child run of every mixture trial."""

    def __init__(self, *, tracker: SearchTracker, searcher: SignConflictSearcher, progress=None) -> None:
        self.tracker, self.searcher = tracker, searcher
        self.progress = progress or (lambda line: None)
        self.best: tuple[float, str] | None = None
        self.awaiting: dict[str, dict] = {}  # batch mixture key -> its result, until its checkpoint comes
        self.chunked: set[str] = set()  # mixture keys whose evaluation chunks were logged as steps
        self.started = time.perf_counter()

    def _spec(self, trial):
        return self.searcher.specs.get(trial.trial_id)

    def _batch(self, trial) -> list[tuple[MixtureSpec, float]] | None:
        """(spec, FSD) of each mixture of a batch trial (``mixtures_per_trial`` > 1), else None."""
        if "batch" not in trial.config:
            return None
        fsd = [item.get("fsd", float("nan")) for item in trial.config["batch"]]
        return [(spec, fsd[i]) for i, (_, spec) in enumerate(self.searcher.mixtures_of(trial.trial_id))]

    def _open(self, spec) -> bool:
        """Whether the mixture is still to be recorded: a batch re-run by Ray Tune reports again
        what it had already finished, and that must not touch the finished run."""
        return self.tracker.status.get(spec.key) in (None, "running")

    def on_trial_start(self, iteration, trials, trial, **info):
        if "batch" in trial.config:
            # A batch's mixtures get their runs as each is evaluated (MixtureTracking._finish):
            # three MLflow calls a mixture instead of four, for searches of quick mixtures.
            self.searcher.trial_started(trial.trial_id)
            return
        spec = self._spec(trial)
        if spec is not None:
            self.searcher.trial_started(trial.trial_id)
            self.tracker.start_mixture(spec, trial.config.get("fsd", float("nan")), trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        batch = self._batch(trial)
        if batch is not None:
            # One result per mixture of the batch; with a checkpoint (an evaluated mixture's
            # adapter and heads), Ray Tune hands that over after this call: on_checkpoint.
            spec, fsd = batch[int(result["batch_index"])] if "batch_index" in result else (None, None)
            if spec is not None and self._open(spec):
                if result.get("should_checkpoint"):
                    self.awaiting[spec.key] = dict(result)  # recorded without artifacts if none comes
                else:
                    self._finish(spec, result, fsd=fsd, trial_id=trial.trial_id)
            return
        spec = self._spec(trial)
        # A chunk of the evaluation (eval_chunks): logged now. The whole evaluation is logged
        # once, with the mixture's status, by on_trial_complete.
        if spec is not None and not result.get("done") and float(result.get("evaluated_fraction", 1.0)) < 1.0:
            self.tracker.log_progress(spec, numeric_metrics(result), result.get("training_iteration", 0))
            self.chunked.add(spec.key)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        batch, result = self._batch(trial), trial.last_result or {}
        if batch is not None and "batch_index" in result:
            spec, fsd = batch[int(result["batch_index"])]
            self.awaiting.pop(spec.key, None)
            if self._open(spec):
                self._finish(spec, result, checkpoint, fsd=fsd, trial_id=trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        batch = self._batch(trial)
        if batch is not None:  # every mixture reported before the trial ended; in case one did not:
            self._close(batch, trial, "the trial ended without evaluating it")
            return
        spec = self._spec(trial)
        if spec is not None:
            self._finish(spec, trial.last_result or {}, trial.checkpoint)

    def _close(self, mixtures, trial, error: str) -> None:
        """The end of a trial for its mixtures (spec, FSD) still to be recorded: one whose
        checkpoint never came is recorded from its result, without artifacts; one that never
        reported fails with ``error``. Skipped: what is recorded already (a trial re-run by Ray
        Tune, or after a restore) and what the searcher runs again (its trial never started)."""
        for spec, fsd in mixtures:
            result = self.awaiting.pop(spec.key, None)
            if not self._open(spec) or spec.key not in self.searcher.outcomes:
                continue
            if result is not None:
                self._finish(spec, result, fsd=fsd, trial_id=trial.trial_id)
            else:
                self._fail(spec, error, fsd=fsd, trial_id=trial.trial_id)

    def _fail(self, spec, error: str, **new_run) -> None:
        self.tracker.finish_mixture(spec, "failed", error=error, **new_run)
        self._report(f"{'failed':<13} {spec.label():<40} ({error.splitlines()[-1][:80]})")

    def _finish(self, spec, result: dict, checkpoint=None, **new_run) -> None:
        """Record the mixture's outcome; ``new_run`` (``fsd``, ``trial_id``) creates its run if it has none."""
        status, _ = trial_outcome(result, objectives=self.searcher.objectives)
        metrics = numeric_metrics(result)
        if result.get("mixture_error"):  # a mixture of a batch raised; the batch went on
            self._fail(spec, str(result["mixture_error"]), **new_run)
            return
        # Step 0, as the run's FSD, so that MLflow's chart view compares runs; an evaluation logged
        # chunk by chunk (eval_chunks > 1) ends at its last chunk's step, its latest value.
        step = int(result.get("training_iteration", 0)) if spec.key in getattr(self, "chunked", ()) else 0
        if status == "evaluated" and checkpoint is not None:
            with checkpoint.as_directory() as path:
                self.tracker.finish_mixture(spec, status, metrics=metrics, artifact_dir=path, step=step, **new_run)
        else:
            self.tracker.finish_mixture(spec, status, metrics=metrics, step=step, **new_run)
        if status == "evaluated" and (self.best is None or result[METRIC] > self.best[0]):
            self.best = (result[METRIC], spec.label())
        self._report(f"{status:<13} {spec.label():<40} accuracy {result.get('accuracy_mean', float('nan')):.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        # (a mixture that has no run gets one: a batch's, or one whose trial never started)
        spec = self._spec(trial)
        single = [] if spec is None else [(spec, trial.config.get("fsd", float("nan")))]
        self._close(self._batch(trial) or single, trial, _error_text(trial))

    def _report(self, line: str) -> None:
        c = self.searcher.counts
        best = f"best {self.best[0]:.4f} {self.best[1]}" if self.best else "best -"
        self.progress(f"[{time.perf_counter() - self.started:6.1f}s] {line} | {c.evaluated} evaluated, "
                      f"{c.filtered} filtered, {c.repeats} repeats | {best}")


class TrainingTracking(Callback):
    """One MLflow run per domain adapter: params, per-epoch metrics, the adapter as artifact."""

    def __init__(self, *, client, experiment_id: str, params: dict, progress=None) -> None:

        self._log_run = log_training_run
        self.client, self.experiment_id, self.params = client, experiment_id, params
        self.progress = progress or (lambda line: None)
        self.runs: dict[str, str] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        domain = trial.config["domain"]
        params = {**self.params, "domain": domain, "fingerprint": trial.config["fingerprints"][domain],
                  **trial.config.get("run_params", {}).get(domain, {})}
        self.runs[trial.trial_id] = self._log_run(self.client, self.experiment_id, domain=domain, params=params)
        self.progress(f"training {domain}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        ts, step = int(time.time() * 1000), int(result.get("epoch", result.get("training_iteration", 0)))
        self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in numeric_metrics(result).items()
                                               if k != "epoch"])
        self.progress(f"  {trial.config['domain']}: epoch {step} loss {result.get('train_loss', float('nan')):.4f} "
                      f"val accuracy {result.get('val_accuracy', float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        path = (trial.last_result or {}).get("adapter_path")
        if path:
            self.client.log_artifacts(run_id, path, "adapter")
            self.client.set_tag(run_id, ADAPTER_PATH_TAG, path)
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.client.set_tag(run_id, ERROR_TAG, _error_text(trial)[:5000])
            self.client.set_terminated(run_id, "FAILED")
        self.progress(f"training {trial.config['domain']} failed: {_error_text(trial).splitlines()[-1][:200]}")


def _error_text(trial) -> str:
    """The trial's error message (Ray writes it to a file in the trial's folder)."""
    path = getattr(trial, "error_file", None)
    try:
        if path:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or "unknown error"
    except OSError:
        pass
    return str(getattr(trial, "error_msg", None) or "unknown error")
