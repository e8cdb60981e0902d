"""Evaluating a classifier, and the worker-side model that mixtures are written into.

One function, :func:`predict`, computes every accuracy signmix reports: in a search trial
and in ``signmix evaluate`` on an export. Same weights, same batches, same result.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from trainables.data import EncodedSplit, encode_split, iter_batches, load_domain
from trainables.heads import cls_features, fit_linear_head, install_linear_head
from trainables.model import cached_tokenizer, load_encoder, model_device, trial_device
from trainables.settings import Experiment, train_draw
from trainables.store import ADAPTER_NAME, HEAD_FILE, AdapterStore

HEAD_FILES = ("head_config.json", HEAD_FILE)

if TYPE_CHECKING:
    from torch import Tensor

logger = logging.getLogger(__name__)


def predict(model, encoded: EncodedSplit, batch_size: int, indices: Sequence[int] | None = None) -> dict[int, int]:
    """Predicted class of each row (by original row index), batches sorted by length.

    Each batch goes to the device of ``model``'s parameters (CPU or the trial's GPU).
    """
    import torch

    device = model_device(model)
    preds: dict[int, int] = {}
    with torch.inference_mode():
        for rows, batch in iter_batches(encoded, batch_size, indices=indices):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits
            for row, p in zip(rows, logits.argmax(dim=-1).tolist()):
                preds[row] = p
    return preds


def classification_metrics(preds: Mapping[int, int], labels: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of ``preds`` (row -> class) against ``labels``."""
    rows = sorted(preds)
    if not rows:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    correct = sum(preds[r] == labels[r] for r in rows)
    f1s = []
    for c in range(num_labels):
        tp = sum(preds[r] == c and labels[r] == c for r in rows)
        fp = sum(preds[r] == c and labels[r] != c for r in rows)
        fn = sum(preds[r] != c and labels[r] == c for r in rows)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": correct / len(rows), "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def target_metrics(preds: Mapping[str, Mapping[int, int]], encoded: Mapping[str, EncodedSplit],
                   num_labels: Mapping[str, int]) -> dict[str, float]:
    """``accuracy/<target>`` and ``macro_f1/<target>`` of each target's predictions, and their
    ``accuracy_mean``: the metrics every evaluation of a mixture reports."""
    metrics: dict[str, float] = {}
    for target, enc in encoded.items():
        m = classification_metrics(preds[target], enc.labels, num_labels[target])
        metrics[f"accuracy/{target}"], metrics[f"macro_f1/{target}"] = m["accuracy"], m["macro_f1"]
    metrics["accuracy_mean"] = sum(metrics[f"accuracy/{t}"] for t in encoded) / len(encoded)
    return metrics


def mixture_targets(model: MixtureModel, experiment: Experiment,
                    split: str = "validation") -> Callable[[str], tuple[EncodedSplit, int]]:
    """The ``prepare`` of :func:`evaluate_targets` for a :class:`MixtureModel`: the target's head
    (refit on the current mixture, or its own) and its ``split``, encoded once per process."""
    def prepare(target: str) -> tuple[EncodedSplit, int]:
        model.use_head(target)
        return encoded_split(experiment, target, split, model.label_names[target]), model.num_labels[target]

    return prepare


def evaluate_targets(model, targets: Sequence[str], prepare: Callable[[str], tuple[EncodedSplit, int]],
                     batch_size: int) -> dict[str, float]:
    """:func:`target_metrics` of ``model`` on each target: the one loop over targets (search
    baselines, ``signmix evaluate``). ``prepare(target)`` makes the target's head the active one
    and returns its encoded split and number of classes."""
    encoded, num_labels, preds = {}, {}, {}
    for target in targets:
        encoded[target], num_labels[target] = prepare(target)
        preds[target] = predict(model, encoded[target], batch_size)
    return target_metrics(preds, encoded, num_labels)


# Per worker process: encoded evaluation splits and one model per store layout. Ray reuses
# worker processes across trials, so the base model is loaded once, not once per trial.
_ENCODED: dict[tuple, EncodedSplit] = {}
_MIXERS: dict[tuple, "MixtureModel"] = {}


def encoded_split(experiment: Experiment, domain: str, split: str,
                  label_names: Sequence[str] | None = None) -> EncodedSplit:
    """``domain``'s ``split`` tokenised for the experiment's base model, cached per process;
    string labels encoded in the order of the trained head's ``label_names``. The training
    split is capped by ``training.max_train_examples`` (the rows training used), the others
    by ``max_eval_examples``."""
    training = experiment.training
    dcfg = experiment.domains[domain]
    cap, draw_seed = train_draw(training, dcfg)
    key = (experiment.base_model, domain, split, dcfg.model_dump_json(), training.max_length, training.max_eval_examples,
           cap, draw_seed, tuple(label_names or ()))
    if key not in _ENCODED:
        data = load_domain(domain, dcfg, splits=(split,), max_eval_examples=training.max_eval_examples,
                           max_train_examples=cap, seed=draw_seed,
                           trust_remote_code=experiment.trust_remote_code, label_names=label_names)
        tok = cached_tokenizer(experiment.base_model, trust_remote_code=experiment.trust_remote_code)
        _ENCODED[key] = encode_split(tok, data.splits[split], training.max_length)
    return _ENCODED[key]


_TEXTS: dict[tuple, tuple[list[str], list[str | None] | None]] = {}


def split_texts(experiment: Experiment, domain: str, split: str,
                label_names: Sequence[str] | None = None) -> tuple[list[str], list[str | None] | None]:
    """The raw texts (and text pairs, or None) of the rows :func:`encoded_split` encodes, cached
    per process: what a word-level attack (:mod:`trainables.blackbox_attack`) changes."""
    training = experiment.training
    dcfg = experiment.domains[domain]
    key = (domain, split, dcfg.model_dump_json(), training.max_eval_examples, training.max_train_examples,
           tuple(label_names or ()))
    if key not in _TEXTS:
        data = load_domain(domain, dcfg, splits=(split,), max_eval_examples=training.max_eval_examples,
                           max_train_examples=training.max_train_examples, seed=training.seed,
                           trust_remote_code=experiment.trust_remote_code, label_names=label_names)
        rows = data.splits[split]
        pairs = list(rows["text_pair"]) if "text_pair" in rows.column_names else None
        _TEXTS[key] = (list(rows["text"]), pairs)
    return _TEXTS[key]


class MixtureModel:
    """A base model holding one adapter slot and the heads of the target domains.

    A mixture is evaluated by copying its weights into the slot in place
    (:meth:`set_weights`): no adapter is added or deleted per trial. The model lives on
    ``device`` (default: :func:`~trainables.model.trial_device`); weights come in on the CPU.
    """

    def __init__(self, *, base_model: str, store: AdapterStore, heads: Sequence[str],
                 trust_remote_code: bool = False, dtype: str = "float32", device=None) -> None:
        import torch

        self.model, _ = load_encoder(base_model, trust_remote_code=trust_remote_code)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else trial_device()
        template = store.path(store.domains()[0] if not heads else heads[0])
        self.model.load_adapter(str(template), load_as=ADAPTER_NAME, with_head=False, use_safetensors=True)
        self.model.set_active_adapters(ADAPTER_NAME)
        self.store = store
        self.heads: dict[str, str] = {}
        self.num_labels: dict[str, int] = {}
        self.label_names: dict[str, list[str]] = {}
        # Heads refit on the current mixture (search.head: refit), by target: (weight, bias).
        self.refit: dict[str, tuple[Tensor, Tensor]] = {}
        for domain in heads:
            self.add_head(domain)
        self._params = {n: p for n, p in self.model.named_parameters() if f".{ADAPTER_NAME}." in n}
        self.model.eval()
        cast_model(self.model, dtype, self.device)

    def add_head(self, domain: str) -> None:
        if domain not in self.heads:
            name = self.model.load_head(str(self.store.path(domain)), load_as=f"head_{domain}", use_safetensors=True)
            cast_model(self.model, self.dtype, self.device)
            self.heads[domain] = name if isinstance(name, str) else f"head_{domain}"
            meta = self.store.meta(domain)
            self.num_labels[domain] = int(meta["num_labels"])
            self.label_names[domain] = list(meta["label_names"])

    def set_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Write a mixture's adapter weights (any device and dtype, e.g. CPU float32 from the
        Ray object store) into the model's parameters in place, on the model's device."""
        import torch

        missing = set(self._params) - set(weights)
        unexpected = set(weights) - set(self._params)
        if missing or unexpected:
            raise ValueError(f"mixture weights do not fit the adapter: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(weights[name])
        self.refit = {}  # heads refit on the previous mixture do not fit this one

    def refit_heads(self, experiment: Experiment, targets: Sequence[str], batch_size: int) -> float:
        """Fit a linear head for each target on the current mixture's [CLS] features of the
        target's training split (``search.head: refit``); :meth:`use_head` then uses it.

        The split is capped by ``training.max_train_examples`` and encoded once per process;
        the fit is deterministic (:func:`trainables.heads.fit_linear_head`). Returns the seconds
        it took (features and fits).
        """
        import torch


        started = time.perf_counter()
        for domain in targets:
            self.add_head(domain)
            encoded = encoded_split(experiment, domain, "train", self.label_names[domain])
            features = cls_features(self.model, encoded, batch_size)
            weight, bias = fit_linear_head(features, torch.as_tensor(encoded.labels), self.num_labels[domain])
            install_linear_head(self.model, _refit_name(domain), weight, bias, activate=False,
                                id2label=dict(enumerate(self.label_names[domain])))
            cast_model(self.model, self.dtype, self.device)
            self.refit[domain] = (weight, bias)
        return time.perf_counter() - started

    def use_head(self, domain: str) -> None:
        """Score with ``domain``'s head: the one refit on the current mixture if there is one."""
        self.add_head(domain)
        self.model.active_head = _refit_name(domain) if domain in self.refit else self.heads[domain]

    def save(self, directory: str | Path, targets: Sequence[str]) -> None:
        """Save the current adapter in ``adapters``' format (safetensors), the first target's
        head beside it, and every target's head under ``heads/<domain>/``.

        Trained heads are copied from the store, where they are saved under the adapter's own
        name: a plain ``model.load_adapter(directory)`` then activates adapter and head
        together. A head refit on this mixture is saved under that name too, as a plain
        one-layer ``adapters`` classification head.
        """
        directory = Path(directory)
        # The export holds float32 weights whatever the evaluation dtype (a bfloat16 search
        # casts them on load; `signmix evaluate` casts the same way). From a GPU model,
        # safetensors copies each tensor to the CPU as it writes the file.
        cast_model(self.model, "float32")
        self.model.save_adapter(str(directory), ADAPTER_NAME, use_safetensors=True, with_head=False)
        cast_model(self.model, self.dtype)
        for i, domain in enumerate(targets):
            for dest in ([directory / "heads" / domain] + ([directory] if i == 0 else [])):
                dest.mkdir(parents=True, exist_ok=True)
                if domain in self.refit:
                    self._save_refit_head(domain, dest)
                    continue
                for name in HEAD_FILES:
                    shutil.copyfile(self.store.path(domain) / name, dest / name)

    def _save_refit_head(self, domain: str, directory: Path) -> None:
        """Save ``domain``'s refit head into ``directory`` under the adapter's name (float32)."""

        weight, bias = self.refit[domain]
        active = self.model.active_head
        install_linear_head(self.model, ADAPTER_NAME, weight, bias, activate=False,
                            id2label=dict(enumerate(self.label_names[domain])))
        self.model.save_head(str(directory), ADAPTER_NAME, use_safetensors=True)
        self.model.delete_head(ADAPTER_NAME)
        self.model.active_head = active


def _refit_name(domain: str) -> str:
    return f"refit_{domain}"


def cast_model(model, dtype: str, device=None) -> None:
    """Cast the model to ``dtype`` ("float32" or "bfloat16") in place, and move it to
    ``device`` when one is given."""
    import torch

    model.to(device=device, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])


def mixture_model(experiment: Experiment, store_root: str) -> MixtureModel:
    """The worker's :class:`MixtureModel` for this experiment, built once per process, on
    the trial's device (the GPU Ray gave it when ``resources.gpu`` > 0 and CUDA is there)."""
    dtype = experiment.evaluation.dtype
    device = trial_device(experiment.resources.gpu)
    key = (experiment.base_model, store_root, dtype, str(device))
    if key not in _MIXERS:
        _MIXERS[key] = MixtureModel(base_model=experiment.base_model, store=AdapterStore(store_root),
                                    heads=list(experiment.evaluation.targets),
                                    trust_remote_code=experiment.trust_remote_code, dtype=dtype,
                                    device=device)
    return _MIXERS[key]
