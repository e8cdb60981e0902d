"""The mixture trial: build one mixture (prune, merge), evaluate it on its targets.

Ray Tune calls :func:`evaluate_mixture` with the mixture's spec in ``config``; the adapter
weights come from the Ray object store (one object per adapter, only the members are
fetched, zero-copy), not from disk. The validation set of each target is evaluated in
``eval_chunks`` chunks with a report after each, so an early-stopping scheduler can stop a
bad mixture before it has seen everything.
With ``head: refit`` each target's head is first refit on the mixture's features of its
training split (:meth:`~trainables.evaluate.MixtureModel.refit_heads`).
The final report carries a checkpoint: the mixed, pruned adapter and the targets' heads
(the refit ones under ``head: refit``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Mapping

from spaces.errors import SpecError
from spaces.operators import MERGE_OPERATORS
from spaces.spec import MixtureSpec
from trainables.blackbox_attack import attack_targets
from trainables.example_correctness import correct_rows, write_correctness
from trainables.evaluate import classification_metrics, encoded_split, mixture_model, predict, target_metrics
from trainables.lora_mixture import MERGE_ON_DELTA, LoraSlot, is_lora_weights
from trainables.mix_and_prune import build_mixture, sparsity
from trainables.robustness import fgsm_predict
from trainables.settings import Experiment

# The key of the adapters' shared initialisation beside the adapters (no domain name starts
# with a dot): the operators that merge deltas (spaces.operators) need it.
INIT_KEY = ".init"
# The attacked texts of search.blackbox_attack, in a mixture's checkpoint (so in its MLflow artifacts).
BLACKBOX_EXAMPLES_FILE = "blackbox_examples.json"


def share_adapter_weights(weights: Mapping[str, Mapping], init: Mapping | None = None) -> dict:
    """Put each adapter into the Ray object store once, as numpy arrays: a trial then
    fetches only its members (:func:`fetch_members`) and reads them zero-copy from the
    node's shared memory. (A dict of torch tensors is unpickled into a private copy of
    every adapter in every worker: slower than reading the files, BENCHMARKS.md.)
    ``init``, the adapters' shared initialisation, goes beside them under :data:`INIT_KEY`."""
    import ray
    import torch

    def as_array(t):
        return t if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()  # numpy has no bfloat16

    shared = {domain: ray.put({k: as_array(t) for k, t in w.items()}) for domain, w in weights.items()}
    if init is not None:
        shared[INIT_KEY] = ray.put({k: as_array(t) for k, t in init.items()})
    return shared


def fetch_members(adapter_weights: Mapping, members) -> dict[str, dict]:
    """The members' weights as torch tensors, from :func:`share_adapter_weights`' refs (or
    from plain dicts of tensors). The tensors share the object store's read-only memory:
    mixing must never write into them (``build_mixture`` returns new tensors)."""
    import warnings

    import numpy as np
    import ray
    import torch

    weights = {m: adapter_weights[m] for m in members}
    refs = {m: w for m, w in weights.items() if isinstance(w, ray.ObjectRef)}
    weights.update(zip(refs, ray.get(list(refs.values()))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {m: {k: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for k, a in w.items()}
                for m, w in weights.items()}


def load_mixture(model, spec: MixtureSpec, adapter_weights: Mapping, experiment: Experiment | None = None) -> dict:
    """Build ``spec``'s mixture from the shared adapter weights and write it into the worker's
    model; with ``spec.head == "refit"`` also refit the targets' heads on it (which needs
    ``experiment``). Returns the mixed weights. The search trial and the confirmation trial
    (:mod:`trainables.confirmation_trial`) both go through here, so they evaluate the same mixture."""
    members = fetch_members(adapter_weights, spec.members)
    lora = None
    if (experiment is None or experiment.evaluation.lora_merge == MERGE_ON_DELTA) \
            and is_lora_weights(members[spec.members[0]]):
        lora = LoraSlot.from_store(model.store, spec.members, members[spec.members[0]])
    init = None
    if MERGE_OPERATORS[spec.merge_method].needs_init and lora is None:  # on ΔW every LoRA starts at 0
        if INIT_KEY not in adapter_weights:
            raise SpecError(f"merge method {spec.merge_method!r} merges deltas from the adapters' shared "
                            "initialisation, which was not put beside the adapters; use merge method 'average'")
        init = fetch_members(adapter_weights, [INIT_KEY])[INIT_KEY]
    weights = build_mixture(members, spec, init, lora=lora)
    model.set_weights(weights)
    model.refit_seconds = 0.0
    model.lora_svd_error = lora.relative_error if lora is not None else None
    if spec.head == "refit":
        if experiment is None:
            raise SpecError("head 'refit' fits each target's head on its training split: pass the experiment")
        model.refit_seconds = model.refit_heads(experiment, spec.targets, experiment.evaluation.batch_size)
    return weights


def _peak_rss_mib() -> float:
    """This worker process's peak resident memory so far, in MiB (NaN where unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _chunks(n: int, parts: int) -> list[list[int]]:
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def evaluate_mixture(config: Mapping, *, adapter_weights: Mapping, experiment: Experiment,
                     store_root: str) -> None:
    """Build and evaluate the mixture ``config["spec"]``; reports metrics and a checkpoint.

    A ``config["batch"]`` of mixtures (``search.mixtures_per_trial`` > 1) is evaluated one
    after the other, each reported whole with its ``batch_index`` and checkpoint; a mixture
    that raises is reported with its ``mixture_error`` (it failed; the rest of the batch runs).
    """
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(experiment.resources.cpu)))
    started = time.perf_counter()
    model = mixture_model(experiment, store_root)  # loaded once per worker process
    setup_seconds = time.perf_counter() - started
    if "batch" not in config:
        spec = MixtureSpec.from_dict(config["spec"])
        metrics, correct, attacked = _evaluate(model, spec, config.get("fsd", float("nan")), adapter_weights,
                                               experiment, started, setup_seconds, partial=tune.report)
        _report_with_checkpoint(model, spec, metrics, correct, attacked)
        return
    for i, item in enumerate(config["batch"]):
        spec = MixtureSpec.from_dict(item["spec"])
        try:
            metrics, correct, attacked = _evaluate(model, spec, item.get("fsd", float("nan")), adapter_weights,
                                                   experiment, time.perf_counter(), setup_seconds if i == 0 else 0.0,
                                                   partial=None)
        except Exception:  # noqa: BLE001 - this mixture failed, not the batch: the driver records why
            import traceback

            # accuracy_mean: Ray Tune refuses a result without its metric; NaN, and the error, say failed.
            tune.report({"accuracy_mean": float("nan"), "batch_index": i,
                         "mixture_error": traceback.format_exc()[-5000:]})
            continue
        _report_with_checkpoint(model, spec, {**metrics, "batch_index": i}, correct, attacked)


def _report_with_checkpoint(model, spec: MixtureSpec, metrics: dict, correct: Mapping[str, list[int]],
                            attacked: Mapping[str, list[dict]] | None) -> None:
    """Report the mixture's metrics with its checkpoint: the adapter, the targets' heads and
    its per-example validation correctness (read back by the confirmation, never re-evaluated),
    and a few texts the black-box attack changed when it ran."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="signmix-mixture-") as tmp:
        model.save(tmp, list(spec.targets))
        write_correctness(tmp, "validation", correct)
        if attacked is not None:
            Path(tmp, BLACKBOX_EXAMPLES_FILE).write_text(json.dumps(attacked, indent=1), encoding="utf-8")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _evaluate(model, spec: MixtureSpec, fsd: float, adapter_weights: Mapping, experiment: Experiment,
              started: float, setup_seconds: float, *, partial) -> tuple[dict, dict[str, list[int]], dict | None]:
    """Build ``spec``'s mixture into ``model`` and evaluate it on its targets' validation
    splits; ``partial`` (``tune.report``, or None) gets the metrics after each chunk but the last.
    Returns the metrics, each target's per-example correctness, and the black-box attack's
    example texts per target (None when the attack is off)."""
    built = time.perf_counter()
    weights = load_mixture(model, spec, adapter_weights, experiment)
    refit_seconds = model.refit_seconds  # head: refit, the linear heads fitted on this mixture
    lora_svd_error = model.lora_svd_error  # LoRA merged on ΔW: ||ΔW - B·A·s|| / ||ΔW|| of the refactorisation
    build_seconds = time.perf_counter() - built - refit_seconds

    batch_size = experiment.evaluation.batch_size
    n_chunks = experiment.evaluation.chunks
    for t in spec.targets:
        model.add_head(t)
    per_target = {t: encoded_split(experiment, t, "validation", model.label_names[t])  # cached per process
                  for t in spec.targets}
    setup_seconds += time.perf_counter() - built - build_seconds - refit_seconds
    predict_seconds = 0.0
    chunks = {t: _chunks(len(enc), n_chunks) for t, enc in per_target.items()}
    preds: dict[str, dict[int, int]] = {t: {} for t in spec.targets}
    metrics: dict = {}
    for step in range(max(len(c) for c in chunks.values())):
        for target, enc in per_target.items():
            if step < len(chunks[target]):
                model.use_head(target)
                t0 = time.perf_counter()
                preds[target].update(predict(model.model, enc, batch_size, indices=chunks[target][step]))
                predict_seconds += time.perf_counter() - t0
        metrics = {"fsd": fsd, "k": spec.k, "sparsity": sparsity(weights),
                   "build_seconds": build_seconds, "setup_seconds": setup_seconds, "refit_seconds": refit_seconds,
                   "predict_seconds": predict_seconds, "examples": sum(len(p) for p in preds.values()),
                   "worker_peak_rss_mib": _peak_rss_mib(),
                   **({"lora_svd_error": lora_svd_error} if lora_svd_error is not None else {})}
        metrics.update(target_metrics(preds, per_target, model.num_labels))
        metrics["evaluated_fraction"] = sum(len(p) for p in preds.values()) / sum(len(e) for e in per_target.values())
        metrics["eval_seconds"] = time.perf_counter() - started
        if metrics["evaluated_fraction"] < 1.0 and partial is not None:
            partial(metrics)

    fgsm_step = experiment.evaluation.fgsm_step
    if fgsm_step is not None:
        # Robust accuracy (the paper's FGSM attack): the same rows, chunks and batches as above.
        for target, enc in per_target.items():
            model.use_head(target)
            robust: dict[int, int] = {}
            for rows in chunks[target]:
                robust.update(fgsm_predict(model.model, enc, batch_size, fgsm_step, indices=rows))
            metrics[f"robust_accuracy/{target}"] = classification_metrics(
                robust, enc.labels, model.num_labels[target])["accuracy"]
        metrics["robust_accuracy_mean"] = sum(metrics[f"robust_accuracy/{t}"] for t in spec.targets) / len(spec.targets)
    attacked = None
    if experiment.evaluation.blackbox_attack is not None:
        # The black-box word-substitution attack on a seeded sample of the same validation rows.
        t0 = time.perf_counter()
        bb_metrics, attacked, _ = attack_targets(model, spec.targets, experiment)
        metrics.update(bb_metrics, blackbox_seconds=time.perf_counter() - t0)
    return metrics, {t: correct_rows(preds[t], enc.labels) for t, enc in per_target.items()}, attacked
