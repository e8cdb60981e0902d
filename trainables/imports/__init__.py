"""Bring your own adapters: ``adapters`` folders, hub ids and PEFT LoRA, turned into the store's form.

One entry point, :func:`import_adapter`, takes what a config names for a domain
(``{"path": ...}``, ``{"hub": ...}`` or ``{"peft": ...}``), checks everything before
anything is written, and returns an :class:`ImportedAdapter` in memory: ``adapters``'
files under the internal name ``ADAPTER_NAME``, with its head when it has one, and its
source (kind, location, file hashes) for ``signmix.json`` and ``mixture.json``.
:meth:`ImportedAdapter.commit` writes it into an :class:`~trainables.store.AdapterStore`.
"""

from __future__ import annotations

from typing import Any, Mapping

from spaces.errors import UsageError
from trainables.architecture import (
    INDEPENDENT_INIT_FSD,
    SHARED_INIT_THRESHOLD,
    InitialisationReport,
    check_same_architecture,
    initialisation_weights,
    shared_initialisation_check,
)
from trainables.imports.adapters_folder import read_adapters_folder, read_hub_adapter
from trainables.imports.peft_lora import read_peft_lora
from trainables.imports.store_form import (
    BaseModelFacts,
    ImportedAdapter,
    base_model_facts,
    check_base_model,
    signmix_settings,
)

SOURCE_KINDS = ("path", "hub", "peft")
_OPTIONS = {"path": {"allow_pickle", "with_head", "check_base_name"},
            "hub": {"allow_pickle", "with_head", "check_base_name", "version"},
            "peft": {"allow_pickle", "check_base_name", "drop_modules_to_save"}}

__all__ = ["BaseModelFacts", "INDEPENDENT_INIT_FSD", "ImportedAdapter", "InitialisationReport",
           "SHARED_INIT_THRESHOLD", "SOURCE_KINDS", "base_model_facts", "check_base_model",
           "check_same_architecture", "import_adapter", "initialisation_weights", "read_adapters_folder",
           "read_hub_adapter", "read_peft_lora", "shared_initialisation_check", "signmix_settings"]


def import_adapter(label: str, source: Mapping[str, Any], *, base_model: str,
                   trust_remote_code: bool = False) -> ImportedAdapter:
    """Returns the adapter ``source`` names, checked and converted into the store's form.

    Args:
        label: the domain the adapter is for (named in every message).
        source: exactly one of ``path`` (an ``adapters`` folder), ``hub`` (an id resolved by
            ``adapters``' hub code) or ``peft`` (a PEFT LoRA folder), plus options:
            ``allow_pickle`` (default false), ``check_base_name`` (default true),
            ``with_head`` (path/hub, default true), ``version`` (hub),
            ``drop_modules_to_save`` (peft, default false).
        base_model: the experiment's base model (hub id or local folder).

    Raises:
        UsageError: a malformed ``source``; StoreError (a UsageError) for every failed check.
    """
    kinds = [k for k in SOURCE_KINDS if source.get(k) is not None]
    if len(kinds) != 1:
        raise UsageError(f"adapter of {label!r} must name exactly one of path, hub, peft; got "
                         f"{kinds or 'none'} in {dict(source)}")
    kind = kinds[0]
    unknown = set(source) - {kind} - _OPTIONS[kind]
    if unknown:
        raise UsageError(f"adapter of {label!r}: unknown option(s) {sorted(unknown)} for a {kind} adapter; "
                         f"allowed: {sorted(_OPTIONS[kind])}")
    for flag in ("allow_pickle", "with_head", "check_base_name", "drop_modules_to_save"):
        if flag in source and not isinstance(source[flag], bool):
            raise UsageError(f"adapter of {label!r}: {flag} must be true or false, got {source[flag]!r}")
    common = {"label": label, "base_model": base_model, "allow_pickle": source.get("allow_pickle", False),
              "check_name": source.get("check_base_name", True), "trust_remote_code": trust_remote_code}
    if kind == "path":
        return read_adapters_folder(source["path"], with_head=source.get("with_head", True), **common)
    if kind == "hub":
        return read_hub_adapter(str(source["hub"]), version=source.get("version"),
                                with_head=source.get("with_head", True), **common)
    return read_peft_lora(source["peft"], drop_modules_to_save=source.get("drop_modules_to_save", False), **common)
