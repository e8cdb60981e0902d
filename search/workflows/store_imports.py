"""The domains that bring an existing adapter (``domains.<d>.adapter``): checked, fingerprinted,
committed into the store, and the shared-initialisation check over the stored adapters.

The files are read and checked by :func:`trainables.imports.import_adapter`; this module is
what the CLI and the runner do with that for a whole config. Nothing here starts Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Callable, Mapping

from search.settings.config import Config
from search.tracking.tracker import log_training_run
from spaces.errors import StoreError
from spaces.fsd import SignIndex
from trainables.data import check_labels, load_domain
from trainables.imports import (
    check_same_architecture,
    import_adapter,
    initialisation_weights,
    shared_initialisation_check,
)
from trainables.model import adapter_config_for

if TYPE_CHECKING:
    from trainables.imports import ImportedAdapter, InitialisationReport
    from trainables.store import AdapterStore

logger = logging.getLogger(__name__)


def imported_domains(cfg: Config) -> list[str]:
    """The domains that name an existing adapter instead of being trained, sorted."""
    return sorted(d for d, dc in cfg.domains.items() if dc.adapter is not None)


def import_all(cfg: Config) -> dict[str, ImportedAdapter]:
    """Returns every named adapter, read and checked (files, pickle, base model); writes nothing.

    Raises:
        StoreError: one message listing every adapter that cannot be imported (not only the
            first), each with its own problem and fix, so that one run shows them all.
    """

    adapters, problems = {}, []
    for d in imported_domains(cfg):
        try:
            adapters[d] = import_adapter(d, cfg.domains[d].adapter.source(), base_model=cfg.base_model,
                                         trust_remote_code=cfg.trust_remote_code)
        except StoreError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise StoreError(problems[0])
    if problems:
        raise StoreError(f"{len(problems)} adapters cannot be imported:\n" + "\n".join(f"  - {p}" for p in problems))
    return adapters


def check_imports(cfg: Config) -> dict[str, ImportedAdapter]:
    """Every check on the named adapters before anything is written; returns them.

    Raises:
        StoreError (a UsageError): a missing, corrupt or pickle-only file, another base model,
            or two members (imported, or imported and trained with ``adapter``) whose
            architectures differ, named with both values and the fix.
    """

    imported = import_all(cfg)
    if not imported:
        return imported
    configs = {d: a.config for d, a in imported.items()}
    trained = sorted(set(cfg.domains) - set(imported))
    if trained:  # the adapters signmix trains, as `adapters` describes them
        configs[trained[0]] = adapter_config_for(cfg.adapter).to_dict()
    try:
        check_same_architecture(configs)
    except StoreError as exc:
        hint = (f" (the adapters signmix trains, such as {trained[0]!r}, follow the config's `adapter` "
                "section: set it to the imported adapters' architecture)") if trained else ""
        raise StoreError(f"{exc}{hint}") from None
    return imported


def head_trained(cfg: Config, adapter: ImportedAdapter) -> bool:
    """Whether signmix trains a head for this imported adapter (it has none, and its domain has data)."""
    return not adapter.has_head and cfg.domains[adapter.label].has_data


def import_fingerprint(cfg: Config, adapter: ImportedAdapter) -> str:
    """The store fingerprint of an imported adapter: its source files' hashes, and for a head that
    signmix trains, the training settings and data too."""
    blob = {"import": adapter.fingerprint(), "base_model": cfg.base_model}
    if head_trained(cfg, adapter):
        blob.update(training=cfg.training.model_dump(),
                    domain=cfg.domains[adapter.label].model_dump(exclude={"adapter"}))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def source_text(adapter: ImportedAdapter) -> str:
    """``kind:location`` of an imported adapter, for MLflow params and messages."""
    return f"{adapter.source['kind']}:{adapter.source.get('location')}"


def _head_labels(cfg: Config, adapter: ImportedAdapter) -> dict:
    """``label_names``/``num_labels`` of an imported head, checked against the domain's data."""
    head = (adapter.head_config or {}).get("config", {})
    label2id = head.get("label2id") or {}
    num_labels = int(head.get("num_labels") or len(label2id))
    names = [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])] or \
        [f"LABEL_{i}" for i in range(num_labels)]
    domain = cfg.domains[adapter.label]
    if domain.has_data:

        data = load_domain(adapter.label, domain, splits=("train", "validation"),
                           max_train_examples=cfg.training.max_train_examples,
                           max_eval_examples=cfg.training.max_eval_examples, seed=cfg.training.seed,
                           trust_remote_code=cfg.trust_remote_code)
        check_labels(data, num_labels)
        names = list(data.label_names) + names[len(data.label_names):]
    return {"label_names": names, "num_labels": num_labels}


def commit_imports(cfg: Config, store: AdapterStore, imported: Mapping[str, ImportedAdapter], *,
                   force: bool, progress: Callable[[str], None], client=None,
                   experiment_id: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """Write the imported adapters that need no training into the store (and a FINISHED MLflow
    run each); returns (imported, skipped, needing a head), the last for the training trials."""
    imported_now, skipped, need_head = [], [], []
    for domain, adapter in sorted(imported.items()):
        fp = import_fingerprint(cfg, adapter)
        if not force and store.has(domain, fp):
            progress(f"{domain}: imported adapter already in the store ({source_text(adapter)}), skipped")
            skipped.append(domain)
            continue
        if head_trained(cfg, adapter):
            need_head.append(domain)
            continue
        meta = {"fingerprint": fp, "base_model": cfg.base_model, "head_trained": False,
                "recorded_base_model": adapter.adapter_config.get("model_name")}
        if adapter.has_head:
            meta.update(_head_labels(cfg, adapter))
            path = adapter.commit(store, extra_meta=meta)
        else:  # no head and no data: a member of mixtures, never a target
            staged = store.staging_dir(domain)
            adapter.write(staged)
            path = store.commit(domain, staged, {**adapter.meta(), **meta})
        progress(f"{domain}: imported {source_text(adapter)}" + ("" if adapter.has_head else " (no head: a member only)"))
        imported_now.append(domain)
        if client is not None:

            run_id = log_training_run(client, experiment_id, domain=domain, params={
                "domain": domain, "fingerprint": fp, "adapter_imported_from": source_text(adapter),
                "head_trained": False, "base_model": cfg.base_model})
            client.log_artifacts(run_id, str(path), "adapter")
            client.set_terminated(run_id, "FINISHED")
    return imported_now, skipped, need_head


def initialisation_report(weights: Mapping[str, Mapping]) -> InitialisationReport:
    """Whether the adapters look like they started from one initialisation (FSD of their
    :func:`~trainables.imports.initialisation_weights`: a LoRA's A factors, any other adapter whole)."""

    index = SignIndex.from_weights({d: initialisation_weights(w) for d, w in weights.items()})
    return shared_initialisation_check(index.matrix, list(index.names))


def initialisation_lines(cfg: Config, weights: Mapping[str, Mapping]) -> list[str]:
    """What to tell the user before a search or with ``signmix fsd``: nothing when the
    adapters share one initialisation, else the pairs with their FSD and what follows."""
    if len(weights) < 2:
        return []
    report = initialisation_report(weights)
    if report.shared:
        return []
    return [f"warning: {report.message()}; averaging still runs, but only LoRA merged on ΔW "
            "(search.lora_merge: delta_svd) gives task_arithmetic/ties/dare_* a defined start (ΔW = 0)"]
