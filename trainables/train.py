"""The training trial: one domain adapter and its classification head.

A plain function Ray Tune calls with one domain's settings. It reports loss and
validation accuracy per epoch and writes the adapter into the :class:`AdapterStore`
(safetensors, moved into place only when complete). MLflow logging is the driver's job.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

from trainables.data import encode_split, load_domain, shuffled_batches
from trainables.evaluate import classification_metrics, predict
from trainables.imports import import_adapter
from trainables.model import adapter_config_for, load_encoder, trial_device
from trainables.settings import Experiment, train_draw
from trainables.store import ADAPTER_NAME, AdapterStore

logger = logging.getLogger(__name__)


def train_domain_adapter(config: Mapping) -> None:
    """Train ``config["domain"]``'s adapter, store it, and report the final metrics.

    ``config`` holds ``domain``, ``experiment`` (a :class:`~trainables.settings.Experiment`), ``store`` (the
    store root) and ``fingerprints`` (domain -> settings hash that lets a later run skip it).
    A domain in ``config["imports"]`` (domain -> its ``adapter`` source) brings an adapter
    without a head: the adapter is imported and frozen, and only a new head is trained.
    """
    import torch
    from ray import tune

    experiment: Experiment = config["experiment"]
    domain = config["domain"]
    training = experiment.training
    torch.set_num_threads(max(1, int(experiment.resources.cpu)))
    cap, draw_seed = train_draw(training, experiment.domains[domain])
    data = load_domain(domain, experiment.domains[domain], splits=("train", "validation"),
                       max_train_examples=cap, max_eval_examples=training.max_eval_examples, seed=draw_seed,
                       trust_remote_code=experiment.trust_remote_code)
    model, tokenizer = load_encoder(experiment.base_model, trust_remote_code=experiment.trust_remote_code)
    train = encode_split(tokenizer, data.splits["train"], training.max_length)
    val = encode_split(tokenizer, data.splits["validation"], training.max_length)

    # The same seed for every domain: all adapters start from one initialisation, which
    # is what makes their weight-space average (and their sign agreement) meaningful.
    torch.manual_seed(training.seed)
    imported = None
    if domain in config.get("imports", {}):
        imported = _load_imported(model, domain, config["imports"][domain], experiment)
    else:
        model.add_adapter(ADAPTER_NAME, config=adapter_config_for(experiment.adapter))
    model.add_classification_head(ADAPTER_NAME, num_labels=data.num_labels,
                                  id2label=dict(enumerate(data.label_names)))
    model.train_adapter(ADAPTER_NAME)
    if imported is not None:  # the imported adapter stays as it is: only the head learns
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(f"heads.{ADAPTER_NAME}."))
    # Initialised on the CPU (the same weights on every machine), then trained on the
    # trial's device: the GPU Ray assigned when resources.gpu > 0 and CUDA is there.
    device = trial_device(experiment.resources.gpu)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate)

    metrics: dict = {}
    epochs = experiment.domains[domain].epochs or training.epochs
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for _, batch in shuffled_batches(train, training.batch_size, seed=training.seed, epoch=epoch):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch["labels"])
            n += len(batch["labels"])
        model.eval()
        val_metrics = classification_metrics(predict(model, val, training.batch_size * 2), val.labels,
                                             data.num_labels)
        metrics = {"epoch": epoch + 1, "train_loss": total / max(n, 1),
                   "val_accuracy": val_metrics["accuracy"], "val_macro_f1": val_metrics["macro_f1"],
                   "epoch_seconds": time.perf_counter() - started}
        if epoch + 1 < epochs:
            tune.report(metrics)

    store = AdapterStore(config["store"])
    staged = store.staging_dir(domain)
    model.save_adapter(str(staged), ADAPTER_NAME, use_safetensors=True)
    meta = {
        **(imported.meta() if imported is not None else {}),
        **({"head_trained": True, "recorded_base_model": imported.adapter_config.get("model_name")}
           if imported is not None else {}),
        "domain": domain,
        "fingerprint": config["fingerprints"][domain],
        "base_model": experiment.base_model,
        "adapter": imported.meta()["adapter"] if imported is not None else experiment.adapter.model_dump(),
        "label_names": list(data.label_names),
        "num_labels": data.num_labels,
        "train_examples": len(train),
        "metrics": {k: v for k, v in metrics.items() if k != "epoch"},
    }
    meta["has_head"] = True
    path = store.commit(domain, staged, meta)
    metrics["adapter_path"] = str(path)
    tune.report(metrics)


def _load_imported(model, domain: str, source: Mapping, experiment: Experiment):
    """Import ``domain``'s adapter (``domains.<d>.adapter``) into ``model`` as ``ADAPTER_NAME``;
    returns the :class:`~trainables.imports.ImportedAdapter` (its source goes into ``signmix.json``)."""
    import tempfile


    imported = import_adapter(domain, source, base_model=experiment.base_model,
                              trust_remote_code=experiment.trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="signmix-import-") as tmp:
        model.load_adapter(str(imported.write(tmp)), load_as=ADAPTER_NAME, with_head=False, use_safetensors=True)
    return imported
