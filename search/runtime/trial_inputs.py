"""What a search's trials receive: the mixture trainable with its resources, the adapter
weights in Ray's object store, and the adapters' shared initialisation when an operator needs it."""

from __future__ import annotations

import os
from typing import Callable

from search.settings.config import Config
from spaces.errors import StoreError
from spaces.operators import MERGE_OPERATORS
from trainables.initialisation import check_init_matches, initial_adapter_weights
from trainables.lora_mixture import MERGE_ON_DELTA, is_lora_weights
from trainables.mixture_trial import evaluate_mixture, share_adapter_weights
from trainables.store import AdapterStore


def trial_resources(cfg: Config) -> dict:
    """The resources of one trial (``resources.cpu``, ``resources.gpu``)."""
    return {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}


def shared_initialisation(cfg: Config, weights) -> dict | None:
    """The adapters' shared initialisation when one of ``search.merge_methods`` merges deltas
    from it (None otherwise), rebuilt once in the driver and cached in the store.

    Raises:
        StoreError: the store cannot provide it (imported adapters, which started elsewhere,
            or adapters of another architecture than the config builds).
    """
    needs = [m for m in cfg.search.merge_methods if MERGE_OPERATORS[m].needs_init]
    if not needs:
        return None
    if cfg.search.lora_merge == MERGE_ON_DELTA and all(is_lora_weights(w) for w in weights.values()):
        return None  # LoRA merged on ΔW: every member starts at ΔW = 0 (B = 0), whoever initialised A
    why = (f"search.merge_methods {needs} merge deltas from the adapters' shared initialisation, which this "
           "store cannot provide")
    store = AdapterStore(cfg.store_path)
    imported = [d for d in sorted(weights) if store.meta(d).get("source")]
    if imported:
        raise StoreError(f"{why}: {imported} were imported, not trained from the config's seed; "
                         "use merge_methods: [average], or train every adapter with signmix (LoRA adapters "
                         "merged on ΔW, search.lora_merge: delta_svd, need no shared initialisation)")
    init = initial_adapter_weights(cfg.experiment(), store)
    try:
        for domain in sorted(weights):
            check_init_matches(init, weights[domain], domain)
    except StoreError as exc:
        raise StoreError(f"{why}: {exc}; or use merge_methods: [average]") from exc
    return init


def mixture_trainable(cfg: Config, weights, trial: Callable | None = None, init=None, *, name_suffix: str = ""):
    """The mixture trial with its resources; adapter weights (and ``init``, the shared
    initialisation, when an operator needs it) go into the Ray object store once.

    ``trial`` replaces :func:`trainables.mixture_trial.evaluate_mixture` (benchmarks, ablations).
    ``name_suffix`` ends the trainable's name. Ray Tune registers a fit's trainable, with the
    adapters it carries, under that name for the whole Ray job, so two fits of one job that run side
    by side (a plan's group searches, Ray tasks of the driver's job) need names apart: under one
    name, the trials of one start with the other's adapters.
    """
    from ray import tune  # in the driver only: a trial's worker never imports this module

    trainable = tune.with_parameters(trial or evaluate_mixture, adapter_weights=share_adapter_weights(weights, init),
                                     experiment=cfg.experiment(), store_root=os.path.abspath(cfg.store_path))
    if name_suffix:
        trainable.__name__ = f"{trainable.__name__}_{name_suffix}"
    return tune.with_resources(trainable, trial_resources(cfg))
