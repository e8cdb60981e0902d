"""Training the store's adapters on Ray Tune (``signmix train``), and what it hands back.

Each domain's adapter is one Ray Tune trial (:func:`trainables.train.train_domain_adapter`),
skipped when the store holds one trained with the same settings (:func:`fingerprint`); the
adapters a config brings (``domains.<d>.adapter``) are checked and imported first, and a head is
trained for those that have none when their domain has data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from search.runtime import interrupts
from search.runtime.cluster import check_cluster_storage, connect_ray, storage_uri
from search.settings.config import Config
from search.workflows.new_domain import check_new_domains
from search.workflows.store_imports import check_imports, commit_imports, head_trained, import_fingerprint, source_text
from search.workflows.search_callbacks import TrainingTracking
from search.tracking.tracker import flatten, open_config_experiment
from search.runtime.trial_inputs import trial_resources
from trainables.data import load_domain
from spaces.errors import StoreError, UsageError
from trainables.store import AdapterStore
from trainables.train import train_domain_adapter

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


DRAW_DEFAULTS = {"train": True, "max_train_examples": None, "draw_seed": None, "epochs": None}


def fingerprint(cfg: Config, domain: str) -> str:
    """A hash of everything that shapes ``domain``'s adapter: same hash, same adapter."""
    settings = cfg.domains[domain].model_dump(exclude={"adapter"})
    # The settings of a new domain's few examples count only when set: a store trained before
    # they existed keeps its fingerprints.
    for key, default in DRAW_DEFAULTS.items():
        if settings.get(key) == default:
            settings.pop(key)
    blob = json.dumps({"base_model": cfg.base_model, "adapter": cfg.adapter.model_dump(),
                       "training": cfg.training.model_dump(), "domain": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_nothing_replaced(store: AdapterStore, domains, prints: dict[str, str]) -> None:
    """Raises UsageError, before anything is written, when the store holds an adapter of one of
    ``domains`` made under other settings (another fingerprint): a store is keyed by domain name,
    so training it again would replace, without a word, the adapter that other configs, their
    MLflow runs and their bundles read. ``--force`` replaces it on purpose."""
    held = []
    for d in domains:
        try:
            meta = store.meta(d)
        except StoreError:  # not there, or unreadable: nothing whole to lose
            continue
        if meta.get("fingerprint") not in (None, prints[d]):
            held.append((d, meta))
    if not held:
        return
    d, meta = held[0]
    made = (f"imported from {meta['source']}" if meta.get("source") else
            f"trained on {meta.get('train_examples', '?')} examples")
    accuracy = (meta.get("metrics") or {}).get("val_accuracy")
    made += f", validation accuracy {accuracy:.3f}" if isinstance(accuracy, (int, float)) else ""
    others = f" (and {', '.join(h for h, _ in held[1:])})" if len(held) > 1 else ""
    raise UsageError(f"domain {d!r}{others}: the store {store.root} already holds an adapter of that name made under "
                     f"other settings ({made}); this config would replace it, and every config, MLflow run and bundle "
                     f"that reads {store.path(d)} would then read the new one. Give this config a store of its own "
                     "(store: ...) or the domain a name of its own, or pass --force to replace it")


@dataclass
class TrainingSummary:
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    imported: list[str] = field(default_factory=list)  # domains.<d>.adapter written into the store as is
    heads_trained: list[str] = field(default_factory=list)  # imported adapters whose head signmix trained
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_training(cfg: Config, *, force: bool = False, progress: Progress = logger.info,
                 debug: bool = False) -> TrainingSummary:
    """Train every domain adapter that the store lacks (or all, with ``force``); import the
    adapters the config names (``domains.<d>.adapter``), training a head for those that have
    none when their domain has data."""
    from ray import tune


    started = time.perf_counter()
    check_new_domains(cfg)  # a data-only domain's few examples, read before anything is written
    check_cluster_storage(cfg)
    store = AdapterStore(cfg.store_path)
    imported = check_imports(cfg)  # every file read and checked before anything is written
    prints = {d: (import_fingerprint(cfg, imported[d]) if d in imported else fingerprint(cfg, d)) for d in cfg.domains}
    trained_here = [d for d in cfg.domains if d not in imported]
    summary = TrainingSummary(skipped=[d for d in trained_here if not force and store.has(d, prints[d])])
    # imported adapters without a head, whose domain has data: a head is trained with the adapter frozen
    heads = [d for d in sorted(imported) if head_trained(cfg, imported[d]) and (force or not store.has(d, prints[d]))]
    todo = [d for d in trained_here if d not in summary.skipped] + heads
    if not force:  # nothing is written over an adapter another config trained (or imported) under other settings
        check_nothing_replaced(store, [*todo, *(d for d in imported if d not in heads)], prints)
    for d in summary.skipped:
        progress(f"{d}: adapter already in the store with these settings, skipped")
    # Check every domain's data in the driver first: a bad column or an empty split is
    # a usage error that should stop everything before a single trial starts.
    for d in todo:
        load_domain(d, cfg.domains[d], splits=("train", "validation"),
                    max_train_examples=1, max_eval_examples=1, trust_remote_code=cfg.trust_remote_code)
    client = experiment_id = None
    if imported:
        client, experiment_id = open_config_experiment(cfg)
        done, skipped, _ = commit_imports(cfg, store, {d: a for d, a in imported.items() if d not in heads},
                                          force=force, progress=progress, client=client, experiment_id=experiment_id)
        summary.imported += done
        summary.skipped += skipped
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary
    connect_ray(cfg, debug=debug)
    if client is None:
        client, experiment_id = open_config_experiment(cfg)
    params = flatten({"base_model": cfg.base_model, "adapter": cfg.adapter.model_dump(),
                      "training": cfg.training.model_dump()})
    # recorded on the MLflow run of each head trained for an imported adapter
    run_params = {d: {"head_trained": True, "adapter_imported_from": source_text(imported[d])} for d in heads}
    trainable = tune.with_resources(train_domain_adapter, trial_resources(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space={"domain": tune.grid_search(todo), "fingerprints": prints, "run_params": run_params,
                     "imports": {d: cfg.domains[d].adapter.source() for d in heads},
                     "experiment": cfg.experiment(), "store": os.path.abspath(cfg.store_path)},
        # one worker process trains domain after domain (each trial seeds itself): no new process,
        # no second import of torch and transformers per domain
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-train-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_uri(cfg),
            verbose=0, failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            callbacks=[TrainingTracking(client=client, experiment_id=experiment_id, params=params,
                                        progress=progress)]))
    try:
        grid = interrupts.fit(tuner)
    except KeyboardInterrupt:
        raise interrupts.Interrupted(
            "training stopped: the adapters already in the store are kept; run `signmix train CONFIG` again to "
            "train the others") from None
    for result in grid:
        domain = result.config["domain"]
        if result.error is not None:
            summary.failed[domain] = str(result.error).strip().splitlines()[-1]
        else:
            (summary.heads_trained if domain in heads else summary.trained).append(domain)
    summary.seconds = time.perf_counter() - started
    return summary
