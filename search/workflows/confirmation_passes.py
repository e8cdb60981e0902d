"""The confirmation's evaluations: what the search already knows is read, the rest runs in parallel.

- **Read, not evaluated.** Every mixture a search evaluates leaves its per-example validation
  correctness beside its MLflow artifact (:mod:`trainables.example_correctness`); a candidate whose
  mixture (same key) was evaluated by the experiment takes its validation split from there.
- **Kept in the store.** Every evaluation is kept in ``<store>/.correctness``
  (:mod:`search.runtime.kept_evaluations`): an own adapter, the soup or a cross head evaluated by one
  search, plan or confirmation is read, not evaluated, by every later one on the same files.
- **Parallel.** What is left runs as one Ray Tune trial per distinct mixture
  (:func:`trainables.confirmation_trial.confirm_candidates` on one candidate), as many at once as
  ``search.max_concurrent`` and the cluster allow, each worker keeping its model across
  trials; a line per finished mixture says how far it is.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from search.runtime import interrupts
from search.runtime.cluster import storage_uri
from search.runtime.kept_evaluations import StoredCorrectness
from search.runtime.stopwatch import rows_in
from search.tracking.experiment_runs import evaluated_mixture_run
from search.tracking.layout import MIXTURE_ARTIFACT
from search.runtime.trial_inputs import shared_initialisation, trial_resources
from spaces.errors import SignmixError
from trainables.example_correctness import VALIDATION_CORRECTNESS_FILE, read_correctness
from trainables.confirmation_trial import CORRECTNESS_FILE, confirm_candidates
from trainables.mixture_trial import share_adapter_weights

if TYPE_CHECKING:
    from search.settings.config import Config

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
        run = runs.get(name) or evaluated_mixture_run(client, experiment_id, spec.key)
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
                            progress: Callable[[str], None] = logger.info,
                            count_rows: Callable[[int], None] | None = None) -> dict:
    """Evaluate each distinct mixture of ``candidates`` (name -> (spec, splits)) in its own Ray
    Tune trial, in parallel; returns name -> split -> target -> [0/1 ...]. ``count_rows`` is told
    how many rows the trials scored (those read back from the store not counted)."""
    from ray import tune  # Ray is imported when a confirmation runs, not when the CLI starts

    # One evaluation per distinct mixture, however many names it has; what the store kept is read,
    # target by target, and a trial evaluates only the targets (and splits) it lacks.
    stored = StoredCorrectness(cfg)
    specs = {spec.key: spec for spec, _ in candidates.values()}
    wanted: dict[str, set] = {}
    for spec, splits in candidates.values():
        wanted.setdefault(spec.key, set()).update(splits)
    by_key_correct: dict[str, dict] = {key: {} for key in wanted}
    todo: list[tuple[str, dict]] = []
    read = 0
    for key, splits in wanted.items():
        spec, missing = specs[key], {}
        for split in sorted(splits):
            for target in spec.targets:
                kept = stored.read(spec, split, target)
                if kept is None:
                    missing.setdefault(split, []).append(target)
                    continue
                read += 1
                for part, rows in kept.items():
                    by_key_correct[key].setdefault(part, {})[target] = rows
        by_targets: dict[tuple, list[str]] = {}  # the splits that lack the same targets: one entry
        for split, targets in missing.items():
            by_targets.setdefault(tuple(targets), []).append(split)
        for targets, lacking in by_targets.items():
            entry = {"spec": spec.to_dict(), "splits": lacking}
            if list(targets) != list(spec.targets):
                entry["targets"] = list(targets)
            todo.append((key, entry))
    if read:
        progress(f"{read} evaluation(s) of a target read from {stored.root}, not run again")
    if not todo:
        if count_rows is not None:
            count_rows(0)
        return {cname: by_key_correct[spec.key] for cname, (spec, _) in candidates.items()}
    parts = trial_parts(todo, cfg.search.max_concurrent)
    experiment = cfg.experiment(targets=sorted({t for spec, _ in candidates.values() for t in spec.targets}))
    trainable = tune.with_resources(tune.with_parameters(
        confirm_candidates, adapter_weights=share_adapter_weights(weights, shared_initialisation(cfg, weights)),
        experiment=experiment, store_root=os.path.abspath(cfg.store_path)), trial_resources(cfg))
    grid = interrupts.fit(tune.Tuner(
        trainable,
        param_space={"candidates": tune.grid_search([{key: entry} for key, entry in parts])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_uri(cfg), verbose=0,
                                  callbacks=[_progress_callback(specs, len(parts), progress)],
                                  failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures))))
    failed = [result.error for result in grid if result.error is not None]
    fresh: dict[str, dict] = {}
    for result in grid:  # what finished is kept, even when another trial failed
        if result.error is None:
            with result.checkpoint.as_directory() as folder:
                evaluated = json.loads(open(os.path.join(folder, CORRECTNESS_FILE), encoding="utf-8").read())
            for key, per_split in evaluated.items():  # the parts of one mixture, joined
                for split, per_target in per_split.items():
                    fresh.setdefault(key, {}).setdefault(split, {}).update(per_target)
    if count_rows is not None:
        count_rows(rows_in(fresh))
    for key, per_split in fresh.items():
        stored.write(specs[key], per_split)
        for split, per_target in per_split.items():
            by_key_correct[key].setdefault(split, {}).update(per_target)
    if failed:
        raise SignmixError(f"a confirmation trial failed: {str(failed[0]).strip().splitlines()[-1]}")
    return {cname: by_key_correct[spec.key] for cname, (spec, _) in candidates.items()}


def trial_parts(todo: Sequence[tuple[str, dict]], trials: int) -> list[tuple[str, dict]]:
    """The confirmation's trials: one per evaluation (``(key, {"spec", "splits"[, "targets"]})``),
    the largest first (targets x splits), so that the last trial to start is a short one; while
    there are fewer trials than can run at once (``trials``), the largest is split in two by its
    targets (``"targets"``: each half's), so that a lone long pass does not leave the other cores idle."""
    def size(entry: dict) -> int:
        return len(targets(entry)) * len(entry["splits"])

    def targets(entry: dict) -> list[str]:
        return list(entry.get("targets") or entry["spec"]["targets"])

    parts = [(key, dict(entry)) for key, entry in todo]
    while len(parts) < trials:
        splittable = [part for part in parts if len(targets(part[1])) > 1]
        if not splittable:
            break
        key, entry = max(splittable, key=lambda part: size(part[1]))
        parts.remove((key, entry))
        names = targets(entry)
        half = len(names) // 2
        parts += [(key, {**entry, "targets": names[:half]}), (key, {**entry, "targets": names[half:]})]
    return sorted(parts, key=lambda part: -size(part[1]))


def _progress_callback(specs: Mapping[str, object], total: int, progress: Callable[[str], None]):
    """A Ray Tune callback that says one line per confirmation trial that finishes."""
    from ray.tune import Callback  # Ray is imported only when a confirmation runs

    class ConfirmationProgress(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            ((key, entry),) = trial.config["candidates"].items()
            label = specs[key].label() + (f" on {','.join(entry['targets'])}" if entry.get("targets") else "")
            seconds = (trial.last_result or {}).get("time_total_s", float("nan"))
            splits = "+".join(entry["splits"])
            progress(f"confirmation: {self.done}/{total} done, {label} ({splits}) in {seconds:.1f} s")

    return ConfirmationProgress()
