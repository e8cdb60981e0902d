"""A config's conflict measures: computed once, cached in the store, logged to MLflow.

``weight_fsd`` and ``delta_fsd`` are sign counts on the stored weights, in the driver. The
probe measures need forward passes: one Ray Tune trial per adapter
(:func:`trainables.probes.probe_adapter`), each adapter's passes made once whatever the
number of proposals; ``merge_gap`` needs one per mixture (:func:`merge_gaps`). The pairwise
matrices go to ``<store>/.measures/<fingerprint>.json`` beside the probe outputs
(``<fingerprint>/probes/``), fingerprinted by the adapters' own fingerprints and the probe
settings, and to an MLflow run of the experiment (``signmix.kind = measures``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from search.runtime import interrupts
from search.runtime.cluster import connect_ray, storage_uri
from search.settings.config import Config
from search.tracking.layout import KIND_TAG
from search.tracking.layout import MEASURES_FINGERPRINT_TAG as FINGERPRINT_TAG
from search.tracking.tracker import open_config_experiment
from search.runtime.trial_inputs import shared_initialisation
from spaces.errors import DataError, StoreError
from spaces.measures import (
    PAIRWISE_MEASURES,
    PairwiseMeasure,
    activation_fsd,
    cross_head,
    delta_fsd,
    measures_fingerprint,
    merge_gap,
    weight_fsd,
)
from trainables.data import load_domain
from trainables.initialisation import check_init_matches, initial_adapter_weights
from trainables.lora_mixture import is_lora_weights
from trainables.mixture_trial import INIT_KEY, share_adapter_weights
from trainables.probes import PROBE_SECONDS, probe_adapter, probe_mixtures
from trainables.store import AdapterStore, load_sign_index, sign_weights, write_json_atomic

logger = logging.getLogger(__name__)

MEASURES_DIR = ".measures"
MEASURES_KIND = "measures"  # a run kind of search/tracking/layout.py

Progress = Callable[[str], None]


# The measures that read the probe passes; only these two of them need every domain's head scored.
PROBED = {"activation_fsd", "cross_head", "merge_gap"}
NEED_HEADS = {"cross_head", "merge_gap"}


def probe_settings(cfg: Config, targets: Sequence[str], *, heads: bool = True) -> dict:
    """What the probe trials read: size and split of each domain's probe rows and their seed,
    the domains whose hidden states are probed (``targets``) and those whose heads score every
    adapter (every domain with data and a head in the store; none when ``heads`` is false: for
    ``activation_fsd`` alone, the probe pass reads only the targets' rows)."""
    store = AdapterStore(cfg.store_path)
    scored = [d for d in cfg.member_domains
              if heads and cfg.domains[d].has_data and store.meta(d).get("has_head") is not False]
    return {"size": cfg.search.probe_size, "split": cfg.search.probe_split, "seed": cfg.search.seed,
            "activation_domains": sorted(targets), "head_domains": scored}


def _fingerprint(cfg: Config, domains: Sequence[str], probe: Mapping) -> str:
    store = AdapterStore(cfg.store_path)
    return measures_fingerprint({"adapters": {d: store.meta(d).get("fingerprint") for d in domains},
                                 "base_model": cfg.base_model, "max_length": cfg.training.max_length,
                                 "max_train_examples": cfg.training.max_train_examples,
                                 "max_eval_examples": cfg.training.max_eval_examples, "probe": dict(probe)})


def _no_shared_initialisation(imported: Sequence[str]) -> StoreError:
    return StoreError(f"measure delta_fsd compares each adapter's delta from the adapters' shared initialisation, "
                      f"but {list(imported)} were imported and did not start from the config's seed; leave delta_fsd "
                      "out (e.g. --measures weight_fsd,activation_fsd,cross_head, or search.conflict_measure: "
                      "activation_fsd), or train every adapter with signmix")


def delta_initialisation(cfg: Config, weights: Mapping) -> dict | None:
    """What ``delta_fsd`` subtracts: the adapters' shared initialisation, rebuilt from the config
    (None for LoRA, whose ΔW starts at 0). Raises StoreError when the store has imported
    bottleneck adapters, which did not start from it."""

    if all(is_lora_weights(w) for w in weights.values()):
        return None
    store = AdapterStore(cfg.store_path)
    imported = [d for d in sorted(weights) if store.meta(d).get("source")]
    if imported:
        raise _no_shared_initialisation(imported)
    init = initial_adapter_weights(cfg.experiment(), store)
    for domain in sorted(weights):
        check_init_matches(init, weights[domain], domain)
    return init


def check_measures(cfg: Config, names: Sequence[str], *, targets: Sequence[str] | None = None) -> None:
    """Refuse, before anything is computed or written, measures the store or the data cannot give:
    ``delta_fsd`` on imported bottleneck adapters (no shared initialisation), or a
    ``search.probe_split`` that a probed domain does not have."""

    store = AdapterStore(cfg.store_path)
    if "delta_fsd" in names:
        imported = [d for d in sorted(cfg.domains) if d in store.domains() and store.meta(d).get("source")]
        # LoRA: delta_fsd is on ΔW, which every LoRA starts at 0; no initialisation needed
        if imported and not all(is_lora_weights(store.load_weights(d)) for d in imported):
            raise _no_shared_initialisation(imported)
    if set(names) & PROBED:
        probe = probe_settings(cfg, list(targets or cfg.search.targets), heads=bool(set(names) & NEED_HEADS))
        for d in dict.fromkeys([*probe["activation_domains"], *probe["head_domains"]]):
            try:
                load_domain(d, cfg.domains[d], splits=(probe["split"],), max_train_examples=1,
                            max_eval_examples=1, trust_remote_code=cfg.trust_remote_code)
            except DataError as exc:
                raise DataError(f"search.probe_split is {probe['split']!r}, but domain {d!r} cannot give it ({exc}); "
                                "set search.probe_split to a split every domain has (train by default)") from None


def conflict_measures(cfg: Config, names: Sequence[str], *, targets: Sequence[str] | None = None,
                      progress: Progress = logger.info, debug: bool = False) -> dict[str, PairwiseMeasure]:
    """The pairwise measures ``names`` (of :data:`~spaces.measures.PAIRWISE_MEASURES`) over the
    config's adapters, probing ``targets`` (default ``search.targets``): read from the store's
    cache, the missing ones computed and cached (and logged to MLflow)."""

    names = [n for n in PAIRWISE_MEASURES if n in names]
    targets = list(targets or cfg.search.targets)
    weights, _ = load_sign_index(cfg.store_path, cfg.member_domains)
    domains = sorted(weights)
    probe = probe_settings(cfg, targets, heads=bool(set(names) & NEED_HEADS))
    fingerprint = _fingerprint(cfg, domains, probe)
    root = Path(cfg.store_path) / MEASURES_DIR
    if not probe["head_domains"]:  # a pass that also scored every head holds what a lighter one gives
        heavier = _read(root / f"{_fingerprint(cfg, domains, probe_settings(cfg, targets))}.json")
        if all(n in heavier for n in names):
            return {n: PairwiseMeasure.from_json(heavier[n]) for n in names}
    cache = root / f"{fingerprint}.json"
    have = {k: PairwiseMeasure.from_json(v) for k, v in _read(cache).items()}
    missing = [n for n in names if n not in have]
    if not missing:
        return {n: have[n] for n in names}
    store = AdapterStore(cfg.store_path)
    if "weight_fsd" in missing:
        started = time.perf_counter()
        signed = sign_weights(store, weights)
        have["weight_fsd"] = weight_fsd(signed, seconds=time.perf_counter() - started)
    if "delta_fsd" in missing:
        started = time.perf_counter()
        init = delta_initialisation(cfg, weights)
        have["delta_fsd"] = delta_fsd(sign_weights(store, weights) if init is None else weights, init,
                                      seconds=time.perf_counter() - started)
    if {"activation_fsd", "cross_head"} & set(missing):
        scored = " and every domain's head scored" if probe["head_domains"] else ""
        progress(f"measures: probe passes of {len(domains)} adapters on {probe['size']} examples of "
                 f"{', '.join(probe['activation_domains'])}{scored} (one Ray trial each)")
        seconds = run_probe_trials(cfg, weights, probe, root / fingerprint / "probes", debug=debug)
        effects, scores = read_probes(root / fingerprint / "probes", domains, probe)
        have["activation_fsd"] = activation_fsd(effects, seconds=seconds)
        if probe["head_domains"]:
            have["cross_head"] = cross_head(scores, domains, seconds=seconds)
    write_json_atomic(cache, {k: v.to_json() for k, v in have.items()})
    _log_measures(cfg, fingerprint, probe, have)
    return {n: have[n] for n in names}


def cached_measures(cfg: Config) -> dict[str, PairwiseMeasure]:
    """The pairwise measures last cached for this config's adapters (the newest cache file of the
    store whose adapters are this config's domains); empty when none was computed. Reads only."""
    root = Path(cfg.store_path) / MEASURES_DIR
    for path in sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []:
        found = {k: PairwiseMeasure.from_json(v) for k, v in _read(path).items()}
        if found and all(set(m.names) == set(cfg.member_domains) for m in found.values()):
            return found
    return {}


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("the measures cache %s is corrupt; computing the measures again", path)
        return {}


def _tuner(cfg: Config, trainable: Callable, weights: Mapping, grid: list, name: str, extra: Mapping,
           targets: Sequence[str]):
    from ray import tune  # Ray: heavy, loaded by the trial or the Tuner that needs it


    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, adapter_weights=share_adapter_weights(weights),
                                                 experiment=cfg.experiment(targets),
                                                 store_root=os.path.abspath(cfg.store_path)),
                            {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}),
        param_space={**extra, "item": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=cfg.search.max_concurrent),
        run_config=tune.RunConfig(name=f"{cfg.name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=storage_uri(cfg), verbose=0))


def _item_trial(trial: Callable, key: str) -> Callable:
    """``trial`` with the grid's ``item`` passed as ``config[key]`` (Ray Tune needs one grid axis)."""
    def run(config, **kwargs):
        return trial({**config, key: config["item"]}, **kwargs)

    run.__name__ = trial.__name__
    return run


def run_probe_trials(cfg: Config, weights: Mapping, probe: Mapping, out: Path, *, debug: bool = False) -> float:
    """One Ray Tune trial per adapter whose probe file is not in ``out`` yet
    (:func:`trainables.probes.probe_adapter`); returns the seconds every adapter's pass took
    (their own time, the cost of the probe measures), read from the files.

    Raises:
        interrupts.Interrupted: Ctrl-C or SIGTERM stopped the passes; the finished ones are kept
            (each adapter's file is written whole or not at all) and the next run does only the rest.
    """
    from safetensors import safe_open  # heavy: loaded when the files are read or written

    todo = [a for a in sorted(weights) if not (out / f"{a}.safetensors").is_file()]
    if todo:
        try:  # Ctrl-C while Ray starts or while the passes run: the same message, the same kept files
            connect_ray(cfg, debug=debug)
            grid = interrupts.fit(_tuner(cfg, _item_trial(probe_adapter, "adapter"), weights, todo, "probes",
                                         {"probe": dict(probe), "out": str(out)}, probe["activation_domains"]))
        except KeyboardInterrupt:
            done = sum((out / f"{a}.safetensors").is_file() for a in weights)
            raise interrupts.Interrupted(
                f"the probe passes stopped: {done} of {len(weights)} adapters' passes are kept in the store "
                f"({out}); run the command again to do the other {len(weights) - done}") from None
        failed = [r for r in grid if r.error is not None]
        if failed:
            raise StoreError(f"the probe pass of adapter {failed[0].config['item']!r} failed: "
                             f"{str(failed[0].error).strip().splitlines()[-1]}")
    seconds = []  # a file written before its cost was kept with it adds nothing
    for a in sorted(weights):
        with safe_open(str(out / f"{a}.safetensors"), framework="np") as fh:
            if PROBE_SECONDS in (fh.metadata() or {}):
                seconds.append(float(fh.metadata()[PROBE_SECONDS]))
    return float(sum(seconds)) if seconds else float("nan")


def read_probes(folder: Path, domains: Sequence[str], probe: Mapping):
    """Effects (adapter -> layer -> [rows, width]) and the cross-head score matrix (adapter i with
    domain j's head on j's probe rows; NaN where j has no head) from the probe trials' files."""
    from safetensors.torch import load_file  # heavy: loaded when the files are read or written

    effects, scores = {}, np.full((len(domains), len(domains)), np.nan)
    for i, d in enumerate(domains):
        tensors = load_file(str(folder / f"{d}.safetensors"))
        effects[d] = {k.removeprefix("effect."): v for k, v in tensors.items() if k.startswith("effect.")}
        for j, head in enumerate(domains):
            if f"probs.{head}" in tensors:
                probs, labels = tensors[f"probs.{head}"], tensors[f"labels.{head}"]
                scores[i, j] = float((probs.argmax(dim=1) == labels).float().mean())
    return effects, scores


def member_probabilities(folder: Path, members: Sequence[str], target: str):
    """Each member's class probabilities with ``target``'s head on its probe rows (probe files)."""
    from safetensors import safe_open  # heavy: loaded when the files are read or written

    out = {}
    for m in members:
        with safe_open(str(folder / f"{m}.safetensors"), framework="np") as fh:
            out[m] = fh.get_tensor(f"probs.{target}")
    return out


def merge_gaps(cfg: Config, specs: Sequence, *, targets: Sequence[str] | None = None,
               debug: bool = False) -> tuple[dict[str, float], float]:
    """``merge_gap`` of each mixture (key -> value) and the mean seconds one mixture's forward
    pass cost, in batches of mixtures run as Ray Tune trials (:func:`trainables.probes.probe_mixtures`).
    The members' own probabilities come from the probe trials (run first when missing)."""



    targets = list(targets or cfg.search.targets)
    conflict_measures(cfg, ["cross_head"], targets=targets, debug=debug)  # the members' probe passes
    weights, _ = load_sign_index(cfg.store_path, cfg.member_domains)
    probe = probe_settings(cfg, targets)
    folder = Path(cfg.store_path) / MEASURES_DIR / _fingerprint(cfg, sorted(weights), probe)
    shared = dict(weights)
    init = shared_initialisation(cfg, weights)
    if init is not None:
        shared[INIT_KEY] = init
    todo = [s for s in specs if not (folder / "mixtures" / f"{s.key}.safetensors").is_file()]
    seconds = []
    if todo:
        parts = max(1, cfg.search.max_concurrent)
        batches = [[s.to_dict() for s in todo[i::parts]] for i in range(parts) if todo[i::parts]]
        try:  # Ctrl-C while Ray starts or while the passes run
            connect_ray(cfg, debug=debug)
            grid = interrupts.fit(_tuner(cfg, _item_trial(probe_mixtures, "specs"), shared, batches, "merge-gap",
                                         {"probe": dict(probe), "out": str(folder / "mixtures")}, targets))
        except KeyboardInterrupt:
            done = sum((folder / "mixtures" / f"{s.key}.safetensors").is_file() for s in specs)
            raise interrupts.Interrupted(
                f"the merge_gap passes stopped: {done} of {len(specs)} mixtures' passes are kept in the store "
                f"({folder / 'mixtures'}); run the command again to do the rest") from None
        failed = [r for r in grid if r.error is not None]
        if failed:
            raise StoreError(f"a merge_gap pass failed: {str(failed[0].error).strip().splitlines()[-1]}")
        seconds = [r.metrics["merge_gap_seconds"] for r in grid for _ in range(r.metrics["mixtures"])]
    from safetensors import safe_open  # heavy: loaded when the files are read or written

    gaps = {}
    for spec in specs:
        with safe_open(str(folder / "mixtures" / f"{spec.key}.safetensors"), framework="np") as fh:
            merged = {t: fh.get_tensor(f"probs.{t}") for t in spec.targets}
        gaps[spec.key] = merge_gap(merged, {t: member_probabilities(folder / "probes", spec.members, t)
                                            for t in spec.targets})
    return gaps, float(np.mean(seconds)) if seconds else float("nan")


def _log_measures(cfg: Config, fingerprint: str, probe: Mapping, measures: Mapping[str, PairwiseMeasure]) -> None:
    """One MLflow run per measures fingerprint: the probe settings, each measure's cost in seconds,
    and the matrices as ``measures.json``."""

    client, experiment_id = open_config_experiment(cfg)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
                               max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        experiment_id, run_name=f"measures-{fingerprint}",
        tags={KIND_TAG: MEASURES_KIND, FINGERPRINT_TAG: fingerprint}).info.run_id
    if not found:
        for key in ("size", "split", "seed"):
            client.log_param(run_id, f"probe_{key}", probe[key])
        client.log_param(run_id, "probe_targets", ",".join(probe["activation_domains"]))
    for name, measure in measures.items():
        client.log_metric(run_id, f"{name}_seconds", measure.seconds)
    client.log_dict(run_id, {k: v.to_json() for k, v in measures.items()}, "measures.json")
    client.set_terminated(run_id)
