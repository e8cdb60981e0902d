"""Launching the mixture search on Ray Tune, and what it hands back (training: :mod:`search.workflows.adapter_training`)."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from search.runtime import interrupts
from search.runtime.cluster import check_cluster_storage, connect_ray, is_uri, storage_uri
from search.settings.config import Config
from search.workflows.confirmation import finish_search
from search.workflows.export import find_best_run
from search.workflows.new_domain import check_new_domains, new_domain_start
from search.proposals.fsd_gate import gate_mode, validation_tolerance
from search.workflows.conflict_gate import gate_for_search
from search.settings.objectives import OBJECTIVES, robustness_metric, selection_rule
from search.proposals.searcher import METRIC, SignConflictSearcher, unpickled_searchers
from search.proposals.strategies import make_strategy
from search.workflows.store_imports import initialisation_lines
from search.workflows.search_callbacks import MixtureTracking
from search.tracking.layout import KIND_TAG, RAY_EXPERIMENT_TAG
from search.tracking.tracker import SearchTracker, experiment_description, flatten
from search.runtime.trial_inputs import mixture_trainable, shared_initialisation
from spaces.errors import TrackingError, UsageError
from spaces.space import space_from_config
from trainables.store import load_sign_index

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class SearchSummary:
    strategy: str
    max_fsd: float | None
    evaluated: int
    filtered: int
    filtered_mixtures: int
    repeats: int
    stopped_early: int
    failed: int
    best_label: str | None
    best_accuracy: float | None
    best_fsd: float | None
    best_k: int | None
    best_run_id: str | None
    parent_run_id: str | None
    seconds: float
    prefilter_seconds: float = 0.0
    mlflow_seconds: float = 0.0
    fsd_gate: str = ""  # the FSD gate's evidence and decision, one sentence (search/proposals/fsd_gate.py)
    fsd_gate_decision: str = ""  # filter | no_signal | too_few | fixed | off
    fsd_gate_label: str = "FSD gate"  # "conflict gate" when it chooses among measures (measure_gate.py)
    validation_warnings: list = field(default_factory=list)  # validation sets too small to separate mixtures
    confirmation: dict | None = None  # the test-split confirmation (search/workflows/confirmation_decision.py)
    chosen_run_id: str | None = None  # what the tie rule exports (best_run_id when nothing is tied)
    singles: str = ""  # a data-only target: the adapters scored alone first, and how many were not




def _interrupted_search(cfg: Config, tracker) -> tuple[str, str]:
    """The newest search of this experiment that did not finish: (parent run id, Ray path)."""

    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'search' and tags.`signmix.strategy` != 'study' "
                      "and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or RAY_EXPERIMENT_TAG not in runs[0].data.tags:
        raise UsageError(f"there is no interrupted search of {cfg.experiment_name!r} to resume; "
                         "run `signmix search CONFIG` without --resume")
    return runs[0].info.run_id, runs[0].data.tags[RAY_EXPERIMENT_TAG]


NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
# The strategies that score a data-only target's library adapters alone first (they can be told
# what to ask first); exhaustive already proposes singles first, greedy_fsd and soup_all are fixed lists.
SINGLES_FIRST = ("tpe", "random")


def run_search(cfg: Config, *, resume: bool = False, progress: Progress = logger.info,
               debug: bool = False, first_merges: Sequence[Mapping] = (), run_name: str | None = None,
               tags: Mapping[str, str] | None = None, name_suffix: str = "") -> SearchSummary:
    """Run the mixture search of ``cfg.search`` and record it in MLflow.

    With ``resume``, continue the newest interrupted search of the experiment: the same Ray
    Tune experiment (``Tuner.restore``), the same Optuna study (its journal file) and the same MLflow
    parent run, until ``num_mixtures`` distinct mixtures are evaluated in all.
    ``first_merges``: operator choices (``MergeChoices.operator_choices``' form) that an Optuna
    strategy asks first, in order, every member in, after any warm start (a plan's group bodies:
    ``search/plan/transfer.py``). ``run_name`` and ``tags``: the MLflow name and extra tags of the
    search's run (a plan's group search: ``plan-group a+b``, nested under the plan run).
    ``name_suffix``: ends the names of its Ray Tune experiment, its trainable and its Optuna study,
    which start with the second the search starts at (searches that start together: a plan's
    concurrent groups; Ray Tune keeps one trainable per name for the whole Ray job).
    """
    return run_search_with(cfg, resume=resume, progress=progress, debug=debug, first_merges=first_merges,
                           run_name=run_name, tags=tags, name_suffix=name_suffix)


def run_search_with(cfg: Config, *, trial: Callable | None = None, reuse_actors: bool = True,
                    resume: bool = False, progress: Progress = logger.info, debug: bool = False,
                    first_merges: Sequence[Mapping] = (), run_name: str | None = None,
                    tags: Mapping[str, str] | None = None, name_suffix: str = "") -> SearchSummary:
    """:func:`run_search` with another trial or actor setting (benchmarks and ablations:
    ``tests/benchmarks/bench_optimisations.py``).

    ``trial`` replaces :func:`trainables.mixture_trial.evaluate_mixture` and must take the same
    arguments and report the same metrics and checkpoint; ``reuse_actors=False`` gives every
    trial a fresh Ray actor (a fresh worker process), so nothing is kept across trials. A
    resumed search keeps the actor setting of the experiment it restores.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter


    started = time.perf_counter()
    # Snapshot the experiment (trials + searcher) every 2 s at most: what a crash can lose.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    check_new_domains(cfg)
    check_cluster_storage(cfg)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)

    for line in initialisation_lines(cfg, weights):  # adapters that did not start from one initialisation
        progress(line)
    init = shared_initialisation(cfg, weights)  # before Ray starts: a store that cannot provide it stops here
    storage = storage_uri(cfg)
    # The Optuna study is a local SQLite file: beside the Ray experiments, or beside the
    # adapter store when the experiments live on object storage.
    local = os.path.dirname(os.path.abspath(cfg.store_path)) if is_uri(storage) else storage
    os.makedirs(local, exist_ok=True)
    connect_ray(cfg, debug=debug)

    if resume:
        probe = SearchTracker(tracking_uri=cfg.tracking_uri, experiment=cfg.experiment_name,
                              description=experiment_description(cfg),
                              strategy=cfg.search.strategy, measure=cfg.search.fsd_measure)
        parent_id, path = _interrupted_search(cfg, probe)
        if not tune.Tuner.can_restore(path):
            raise UsageError(f"the interrupted search's Ray Tune experiment {path} cannot be restored "
                             "(missing or incomplete); run `signmix search CONFIG` without --resume")
        probe.attach(parent_id)
        progress(f"resuming search {parent_id} from {path}")
        # Tune rebuilds the searcher and callbacks from its own snapshot: use those.
        with unpickled_searchers() as rebuilt:
            tuner = tune.Tuner.restore(path, trainable=mixture_trainable(cfg, weights, trial, init,
                                                                                name_suffix=name_suffix),
                                       resume_unfinished=True, resume_errored=False, restart_errored=False)
        (searcher,) = rebuilt
        tracker = searcher.tracker
        if tracker.parent_id != parent_id:
            tracker.attach(parent_id)
        space = searcher.space
    else:
        tolerance, warnings = validation_tolerance(cfg, progress)
        # max_fsd (fixed or auto) is the gate's alone: auto resolves from the evidence of the search.
        space = space_from_config(cfg.search, cfg.member_domains)
        ray_name = f"search-{cfg.search.strategy}-{time.strftime('%Y%m%d-%H%M%S')}" + (
            f"-{name_suffix}" if name_suffix else "")
        gate, warm_start_order = gate_for_search(cfg, space, tolerance, index, progress=progress, debug=debug)
        # A data-only target: the library adapters alone first (Optuna's strategies, which can be
        # told what to ask first), then the greedy path from the best of them.
        start = new_domain_start(cfg, progress) if cfg.search.strategy in SINGLES_FIRST else None
        if start is not None and start.order is not None:
            warm_start_order = start.order
        strategy = make_strategy(cfg.search.strategy, space=space, index=warm_start_order, seed=cfg.search.seed,
                                 budget=cfg.search.num_mixtures, study_name=ray_name,
                                 storage=os.path.join(local, "optuna.journal"),
                                 n_objectives=len(cfg.search.objectives), warm_start=cfg.search.warm_start,
                                 switch_after=cfg.search.tpe_switch_after,
                                 singles=start.singles if start is not None else ())
        if first_merges and hasattr(strategy, "enqueue"):
            strategy.enqueue([space.params_for(space.domains, merge=m) for m in first_merges])
        tracker = SearchTracker(tracking_uri=cfg.tracking_uri, experiment=cfg.experiment_name,
                                description=experiment_description(cfg),
                                strategy=cfg.search.strategy, measure=cfg.search.fsd_measure)
        searcher = SignConflictSearcher(strategy=strategy, space=space, index=index, tracker=tracker,
                                        budget=cfg.search.num_mixtures,
                                        objectives=[OBJECTIVES[o] for o in cfg.search.objectives],
                                        gate=gate,
                                        mixtures_per_trial=cfg.search.mixtures_per_trial)
        searcher.validation_warnings = warnings
        searcher.singles_line = start.summary_line() if start is not None else ""
        scheduler = None
        if cfg.search.early_stopping and cfg.search.eval_chunks > 1:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.search.eval_chunks,
                                      grace_period=1, reduction_factor=2)
        tuner = tune.Tuner(
            mixture_trainable(cfg, weights, trial, init, name_suffix=name_suffix),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.search.max_concurrent),
                # The searcher stops at the budget of distinct evaluated mixtures (-1: Ray sets
                # no count of its own; a mixture whose trial failed before it started runs again).
                scheduler=scheduler, num_samples=-1, metric=METRIC, mode="max",
                reuse_actors=reuse_actors),
            run_config=tune.RunConfig(
                name=ray_name, storage_path=storage, verbose=0,
                callbacks=[MixtureTracking(tracker=tracker, searcher=searcher, progress=progress),
                           *_result_loggers()],
                failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)))
        tracker.start(run_name=run_name or ray_name, tags=tags, params={
            **flatten(cfg.search.model_dump(), "search."), "domains": ",".join(sorted(cfg.domains)),
            "max_fsd_resolved": "auto (FSD gate)" if cfg.search.max_fsd == "auto" else
            "none" if cfg.search.max_fsd is None else f"{cfg.search.max_fsd:.6f}",
            "space_size": space.size(), "base_model": cfg.base_model, "adapter.method": cfg.adapter.method})
        tracker.client.set_tag(tracker.parent_id, RAY_EXPERIMENT_TAG, f"{storage.rstrip('/')}/{ray_name}")
        limit = cfg.search.max_fsd if isinstance(cfg.search.max_fsd, (str, type(None))) else f"{cfg.search.max_fsd:.4f}"
        # the measure the pre-filter reads, then how a subset's pairs are combined (not a second measure)
        progress(f"search: {cfg.search.strategy}, {space.size()} candidate mixtures, max_fsd {limit} "
                 f"(measure {cfg.search.conflict_measure}, a subset's pairs combined by {cfg.search.fsd_measure})")
    try:
        with _only_our_loggers():
            interrupts.fit(tuner)
    except TrackingError:
        # The tracking server stayed away past the retry window: the MLflow calls below
        # would fail the same way. The parent run stays RUNNING; `--resume` finishes it.
        raise
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM, `signmix submit --stop`: the search was stopped, not failed.
        summary = _end_search(cfg, searcher, tracker, space, started, failed=False, stopped=True)
        raise interrupts.Interrupted(
            f"the search stopped: {summary.evaluated} mixture(s) evaluated are kept in MLflow run "
            f"{summary.parent_run_id} (KILLED)" + (f", best so far {summary.best_label} "
                                                   f"{summary.best_accuracy:.4f}" if summary.best_label else "")
            + "; continue it with `signmix search CONFIG --resume`") from None
    except BaseException:
        _end_search(cfg, searcher, tracker, space, started, failed=True)
        raise
    return _end_search(cfg, searcher, tracker, space, started, failed=False, progress=progress)


def _result_loggers() -> list:
    """Ray Tune's per-trial JSON files (``params.json``, ``result.json``), and not its CSV and
    TensorBoard copies of the same results, which a search's trials would write and flush
    for nothing: MLflow holds every result (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`` brings
    them back). A resumed search restores the loggers it had."""
    from ray.tune.logger import JsonLoggerCallback

    return [JsonLoggerCallback()]


@contextmanager
def _only_our_loggers():
    """Tune's automatic loggers off while the search's fit builds its callbacks (it reads
    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` then), and the variable as it was afterwards: a setting
    the user made is kept, and the process's later fits (probe passes, the confirmation, a plan's
    next group) keep Tune's defaults."""
    before = os.environ.get(NO_AUTO_LOGGERS)
    os.environ.setdefault(NO_AUTO_LOGGERS, "1")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NO_AUTO_LOGGERS, None)


def _end_search(cfg: Config, searcher, tracker, space, started: float, *, failed: bool,
                stopped: bool = False, progress: Progress = logger.info) -> SearchSummary:
    """Close the search's MLflow records and summarise it. A ``stopped`` search's parent run
    is KILLED and its mixtures in flight stay open: ``--resume`` runs them again."""
    if not failed and not stopped:
        tracker.close_dangling()
    summary = _summarise(cfg, searcher, tracker, space, started)
    c = searcher.counts
    tracker.end(failed=failed, stopped=stopped, summary={
        "evaluated": c.evaluated, "filtered": c.filtered, "filtered_mixtures": len(c.filtered_keys),
        "repeats": c.repeats, "stopped_early": c.stopped_early, "failed": c.failed,
        "best_accuracy_mean": summary.best_accuracy if summary.best_accuracy is not None else float("nan"),
        "search_seconds": summary.seconds})
    if not failed and not stopped:

        # After the parent run is closed: the FSD gate's evidence, then the test-split confirmation.
        try:
            finish_search(cfg, searcher, tracker, summary, progress=progress)
        except KeyboardInterrupt:
            raise interrupts.Interrupted(
                f"the search finished ({summary.evaluated} mixture(s) evaluated, best {summary.best_label} in MLflow "
                f"run {summary.parent_run_id}); its test-split confirmation was stopped: `signmix export CONFIG` "
                "confirms the mixture it exports") from None
    return summary


def _summarise(cfg: Config, searcher, tracker, space, started: float) -> SearchSummary:
    c = searcher.counts
    summary = SearchSummary(
        strategy=cfg.search.strategy, max_fsd=gate_mode(cfg.search.max_fsd)[1], evaluated=c.evaluated, filtered=c.filtered,
        filtered_mixtures=len(c.filtered_keys), repeats=c.repeats, stopped_early=c.stopped_early,
        failed=c.failed, best_label=None, best_accuracy=None, best_fsd=None, best_k=None, best_run_id=None,
        parent_run_id=tracker.parent_id, seconds=time.perf_counter() - started,
        prefilter_seconds=c.prefilter_seconds, mlflow_seconds=tracker.seconds,
        singles=getattr(searcher, "singles_line", ""))
    if searcher.results:

        best = find_best_run(tracker.client, tracker.experiment_id, tracker.parent_id,
                             rule=selection_rule(cfg.search.objectives, cfg.search.pareto_rule),
                             robustness=robustness_metric(cfg.search.objectives))
        summary.best_run_id, summary.best_accuracy = best.info.run_id, best.data.metrics["accuracy_mean"]
        summary.best_label, summary.best_fsd = best.info.run_name, best.data.metrics.get("fsd")
        summary.best_k = int(best.data.params["k"])
    return summary
