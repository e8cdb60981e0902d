"""The confirmation's evaluations: what the search already knows is read, the rest runs in parallel.

- **Read, not evaluated.** Every mixture a search evaluates leaves its per-example validation
  correctness beside its MLflow artifact (:mod:`trainables.correctness`); a candidate whose
  mixture (same key) was evaluated by the experiment takes its validation split from there.
- **Parallel.** What is left runs as one Ray Tune trial per distinct mixture
  (:func:`trainables.correctness_trial.confirm_candidates` on one candidate), as many at once as
  ``search.max_concurrent`` and the cluster allow, each worker keeping its model across
  trials; a line per finished mixture says how far it is.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Callable, Mapping

from search import interrupts
from search.cluster import storage_uri
from search.tracking.layout import KEY_TAG, KIND_TAG, MIXTURE_ARTIFACT, STATUS_TAG
from search.trial import shared_initialisation, trial_resources
from spaces.errors import SignmixError
from trainables.correctness import VALIDATION_CORRECTNESS_FILE, read_correctness
from trainables.correctness_trial import CORRECTNESS_FILE, confirm_candidates
from trainables.mixture_trial import share_adapter_weights

if TYPE_CHECKING:
    from search.config import Config

logger = logging.getLogger(__name__)


def stored_validation(client, experiment_id: str, candidates: Mapping[str, tuple], runs: Mapping) -> dict:
    """name -> target -> per-example 0/1 on validation, for the candidates that ask for the
    validation split and whose mixture's run (``runs[name]``, or an evaluated run of the
    experiment with the same ``signmix.mixture_key``) kept its correctness. Runs from before
    signmix kept it are evaluated as before."""
    found: dict[str, dict] = {}
    by_key: dict[str, dict] = {}
    for name, (spec, splits) in candidates.items():
        if "validation" not in splits:
            continue
        if spec.key in by_key:
            found[name] = by_key[spec.key]
            continue
        run = runs.get(name)
        if run is None:
            hits = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                                      filter_string=f"tags.`{KEY_TAG}` = '{spec.key}' and tags.`{STATUS_TAG}` = "
                                                    f"'evaluated' and tags.`{KIND_TAG}` = 'mixture'")
            run = hits[0] if hits else None
        if run is None:
            continue
        with tempfile.TemporaryDirectory(prefix="signmix-correct-") as tmp:
            try:
                path = client.download_artifacts(run.info.run_id, f"{MIXTURE_ARTIFACT}/{VALIDATION_CORRECTNESS_FILE}",
                                                 tmp)
            except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
                logger.info("run %s has no per-example validation record (%s): evaluated again",
                            run.info.run_id, type(exc).__name__)
                continue
            correct = read_correctness(path)
        if set(correct) >= set(spec.targets):
            found[name] = by_key[spec.key] = {t: correct[t] for t in spec.targets}
    return found


def run_confirmation_trials(cfg: Config, candidates: Mapping[str, tuple], weights, *, name: str,
                            progress: Callable[[str], None] = logger.info) -> dict:
    """Evaluate each distinct mixture of ``candidates`` (name -> (spec, splits)) in its own Ray
    Tune trial, in parallel; returns name -> split -> target -> [0/1 ...]."""
    from ray import tune  # Ray is imported when a confirmation runs, not when the CLI starts

    # One evaluation per distinct mixture, however many names it has.
    by_key: dict[str, dict] = {}
    for cname, (spec, splits) in candidates.items():
        entry = by_key.setdefault(spec.key, {"spec": spec.to_dict(), "splits": []})
        entry["splits"] = sorted(set(entry["splits"]) | set(splits))
    if not by_key:
        return {}
    labels = {key: next(spec.label() for spec, _ in candidates.values() if spec.key == key) for key in by_key}
    experiment = cfg.experiment(targets=sorted({t for spec, _ in candidates.values() for t in spec.targets}))
    trainable = tune.with_resources(tune.with_parameters(
        confirm_candidates, adapter_weights=share_adapter_weights(weights, shared_initialisation(cfg, weights)),
        experiment=experiment, store_root=os.path.abspath(cfg.store_path)), trial_resources(cfg))
    grid = interrupts.fit(tune.Tuner(
        trainable,
        param_space={"candidates": tune.grid_search([{key: entry} for key, entry in by_key.items()])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_uri(cfg), verbose=0,
                                  callbacks=[_progress_callback(labels, progress)],
                                  failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures))))
    by_key_correct: dict[str, dict] = {}
    for result in grid:
        if result.error is not None:
            raise SignmixError(f"a confirmation trial failed: {str(result.error).strip().splitlines()[-1]}")
        with result.checkpoint.as_directory() as folder:
            by_key_correct.update(json.loads(open(os.path.join(folder, CORRECTNESS_FILE), encoding="utf-8").read()))
    return {cname: by_key_correct[spec.key] for cname, (spec, _) in candidates.items()}


def _progress_callback(labels: Mapping[str, str], progress: Callable[[str], None]):
    """A Ray Tune callback that says one line per confirmation trial that finishes."""
    from ray.tune import Callback  # Ray is imported only when a confirmation runs

    class ConfirmationProgress(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            (key,) = trial.config["candidates"]
            splits = "+".join(trial.config["candidates"][key]["splits"])
            seconds = (trial.last_result or {}).get("time_total_s", float("nan"))
            progress(f"confirmation: {self.done}/{len(labels)} done, {labels[key]} ({splits}) in {seconds:.1f} s")

    return ConfirmationProgress()
