"""Forward passes on probe examples: what ``activation_fsd``, ``cross_head`` and ``merge_gap`` read.

A probe set is ``probe_size`` rows of a domain's ``probe_split`` (its training split by
default), drawn seeded (:func:`spaces.measures.probe_rows`); its labels are used only by
``cross_head``. Two Ray Tune trials live here:

- :func:`probe_adapter`: one adapter, once: its effect on the hidden states (adapted minus
  base, per transformer layer, each probe example's mean over its tokens) on the activation
  domains' probe rows, and its class probabilities with every probe domain's head on that
  domain's probe rows. Written to ``<out>/<adapter>.safetensors``.
- :func:`probe_mixtures`: ``merge_gap`` inputs for a batch of mixtures: each merged model's
  class probabilities with each target's head on the target's probe rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from spaces.measures import probe_rows
from spaces.spec import MixtureSpec
from trainables.data import iter_batches
from trainables.evaluate import encoded_split, mixture_model
from trainables.mixture_trial import fetch_members, load_mixture
from trainables.model import model_device
from trainables.store import ADAPTER_NAME

if TYPE_CHECKING:
    from torch import Tensor

    from trainables.data import EncodedSplit
    from trainables.settings import Experiment

PROBE_SECONDS = "probe_seconds"  # metric of a probe trial, and metadata of its file


def probe_examples(experiment: Experiment, domain: str, probe: Mapping,
                   label_names: Sequence[str] | None = None) -> tuple[EncodedSplit, list[int]]:
    """``domain``'s probe split, encoded (cached per process), and the probe rows drawn from it."""
    encoded = encoded_split(experiment, domain, probe["split"], label_names)
    return encoded, probe_rows(len(encoded), int(probe["size"]), int(probe["seed"]))


def _forward(model, encoded: EncodedSplit, rows: Sequence[int], batch_size: int, *,
             hidden: bool) -> tuple[Tensor, list[Tensor] | None]:
    """Class probabilities [rows, classes] and (``hidden``) each layer's token-mean hidden state
    [rows, width] (layers 1..L, not the embeddings), in the order of ``rows``."""
    import torch  # torch: heavy, only where tensors are made

    device = model_device(model)
    position = {row: i for i, row in enumerate(rows)}
    probs: Tensor | None = None
    layers: list[Tensor] | None = None
    with torch.inference_mode():
        for chunk, batch in iter_batches(encoded, batch_size, indices=rows):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            out = model(**batch, output_hidden_states=hidden, return_dict=True)
            where = [position[r] for r in chunk]
            p = torch.softmax(out.logits.float(), dim=-1).cpu()
            if probs is None:
                probs = torch.empty(len(rows), p.shape[-1])
            probs[where] = p
            if hidden:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                means = [((h.float() * mask).sum(1) / mask.sum(1)).cpu() for h in out.hidden_states[1:]]
                if layers is None:
                    layers = [torch.empty(len(rows), m.shape[-1]) for m in means]
                for layer, m in zip(layers, means):
                    layer[where] = m
    return probs, layers


def probe_adapter(config: Mapping, *, adapter_weights: Mapping, experiment: Experiment, store_root: str) -> dict:
    """Ray Tune trial: one adapter's probe pass (see the module), written to
    ``config["out"]/<adapter>.safetensors``; reports ``probe_seconds`` and ``cross/<domain>``
    (accuracy with that domain's head on its probe rows)."""
    import torch  # torch: heavy, only where tensors are made
    from safetensors.torch import save_file  # heavy: loaded when the files are read or written


    started = time.perf_counter()
    domain, probe = config["adapter"], config["probe"]
    batch_size = experiment.evaluation.batch_size
    model = mixture_model(experiment, store_root)
    weights = fetch_members(adapter_weights, [domain])[domain]
    tensors: dict[str, Tensor] = {}
    metrics: dict[str, float] = {}
    for d in probe["activation_domains"]:
        model.add_head(d)
        encoded, rows = probe_examples(experiment, d, probe, model.label_names[d])
        model.model.set_active_adapters(None)  # the base model's hidden states
        model.use_head(d)
        _, base = _forward(model.model, encoded, rows, batch_size, hidden=True)
        model.model.set_active_adapters(ADAPTER_NAME)
        model.set_weights(weights)
        _, adapted = _forward(model.model, encoded, rows, batch_size, hidden=True)
        for layer, (b, a) in enumerate(zip(base, adapted)):
            key = f"effect.layer.{layer}"
            tensors[key] = torch.cat([tensors[key], a - b]) if key in tensors else a - b
    model.set_weights(weights)
    for d in probe["head_domains"]:
        model.use_head(d)
        encoded, rows = probe_examples(experiment, d, probe, model.label_names[d])
        probs, _ = _forward(model.model, encoded, rows, batch_size, hidden=False)
        labels = torch.tensor([encoded.labels[r] for r in rows])
        tensors[f"probs.{d}"] = probs.contiguous()
        tensors[f"labels.{d}"] = labels
        metrics[f"cross/{d}"] = float((probs.argmax(dim=1) == labels).float().mean())
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{domain}.{os.getpid()}.tmp"
    seconds = time.perf_counter() - started
    # The pass's own cost travels with its file: a probe pass resumed after Ctrl-C still reports
    # what every adapter's pass cost.
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={PROBE_SECONDS: repr(seconds)})
    os.replace(tmp, out / f"{domain}.safetensors")
    result = {**metrics, PROBE_SECONDS: seconds}
    from ray import tune  # Ray: heavy, loaded by the trial or the Tuner that needs it

    tune.report(result)
    return result


def probe_mixtures(config: Mapping, *, adapter_weights: Mapping, experiment: Experiment,
                   store_root: str) -> dict:
    """Ray Tune trial: for each mixture of ``config["specs"]`` (MixtureSpec dicts), the merged
    model's class probabilities with each target's head on the target's probe rows, written
    to ``config["out"]/<mixture key>.safetensors``; reports ``merge_gap_seconds`` per mixture."""
    from safetensors.torch import save_file  # heavy: loaded when the files are read or written


    probe = config["probe"]
    batch_size = experiment.evaluation.batch_size
    model = mixture_model(experiment, store_root)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for raw in config["specs"]:
        started = time.perf_counter()
        spec = MixtureSpec.from_dict(raw)
        load_mixture(model, spec, adapter_weights, experiment)
        tensors = {}
        for t in spec.targets:
            model.use_head(t)
            encoded, rows = probe_examples(experiment, t, probe, model.label_names[t])
            tensors[f"probs.{t}"], _ = _forward(model.model, encoded, rows, batch_size, hidden=False)
        tmp = out / f".{spec.key}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, out / f"{spec.key}.safetensors")
        seconds.append(time.perf_counter() - started)
    result = {"merge_gap_seconds": sum(seconds) / max(len(seconds), 1), "mixtures": len(seconds)}
    from ray import tune  # Ray: heavy, loaded by the trial or the Tuner that needs it

    tune.report(result)
    return result
