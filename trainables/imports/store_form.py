"""An imported adapter in the store's form, the facts of a base model, and the base-model check.

The store's form is what ``adapters``' ``save_adapter(folder, ADAPTER_NAME, use_safetensors=True)``
writes: ``adapter_config.json`` + ``adapter.safetensors`` (+ ``head_config.json`` +
``model_head.safetensors``), every key under the one internal name ``ADAPTER_NAME``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from spaces.errors import StoreError, UsageError
from trainables.model import adapter_config_for
from trainables.settings import AdapterConfig
from trainables.store import ADAPTER_FILE, ADAPTER_NAME, HEAD_FILE, AdapterStore

if TYPE_CHECKING:
    from torch import Tensor

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


@dataclass(frozen=True)
class BaseModelFacts:
    """What an adapter must agree with in its base model."""

    name: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int


def base_model_facts(base_model: str, *, trust_remote_code: bool = False) -> BaseModelFacts:
    """Returns the facts of ``base_model`` (a hub id or a local folder) from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"base_model {base_model!r} cannot be loaded: {str(exc).splitlines()[0]}") from exc
    return BaseModelFacts(name=base_model, model_type=config.model_type, hidden_size=int(config.hidden_size),
                          num_hidden_layers=int(config.num_hidden_layers))


def _short(name: str) -> str:
    return str(name).rstrip("/").split("/")[-1].lower()


def layers_of(keys) -> set[int]:
    """Returns the transformer layer indices (``...layer.N...``) the weight keys touch."""
    return {int(m.group(1)) for k in keys if (m := _LAYER.search(k))}


def check_base_model(label: str, base: BaseModelFacts, *, model_type: str | None = None,
                     hidden_size: int | None = None, layers: set[int] | None = None,
                     expected_layers: set[int] | None = None, model_name: str | None = None,
                     check_name: bool = True) -> None:
    """Raise a StoreError naming the first fact where the adapter and ``base`` disagree.

    Args:
        model_type, hidden_size, model_name: what the adapter records (None: not recorded).
        layers: the layer indices its weights touch; ``expected_layers``: the ones they must
            touch exactly (``adapters``: all layers but ``leave_out``), else only an upper bound.
        check_name: compare ``model_name`` with the base model's name (last path part,
            case-insensitive), so that a hub id and a local copy of it agree.
    """
    fix = (f"set base_model to the model the adapter was trained on, or leave adapter {label!r} out")
    for what, ours, theirs in (("model_type", model_type, base.model_type),
                               ("hidden_size", hidden_size, base.hidden_size)):
        if ours is not None and ours != theirs:
            raise StoreError(f"adapter {label!r} was trained for another base model: its {what} is {ours!r}, "
                             f"base_model {base.name!r} has {what} {theirs!r}; {fix}")
    if layers:
        top = max(layers)
        if top >= base.num_hidden_layers or (expected_layers is not None and layers != expected_layers):
            raise StoreError(f"adapter {label!r} was trained for another base model: its weights cover layers "
                             f"{sorted(layers)} ({top + 1} layers), base_model {base.name!r} has num_hidden_layers "
                             f"{base.num_hidden_layers}; {fix}")
    if check_name and model_name and _short(model_name) != _short(base.name):
        raise StoreError(f"adapter {label!r} records base model {model_name!r}, but base_model is {base.name!r}; "
                         f"{fix} (if both name the same weights, set `check_base_name: false` for this adapter)")


def signmix_settings(config: Mapping[str, Any]) -> dict:
    """Returns signmix's ``adapter`` settings for an ``adapters`` config dict (the ``config`` field).

    ``{"method": "lora", "rank", "alpha"}``, ``{"method": "seq_bn"|"double_seq_bn",
    "reduction_factor"}`` when the config is exactly what signmix would train; otherwise
    ``{"method": "custom", "config": ...}``. The store compares these across members.
    """

    arch = config.get("architecture")
    if arch == "lora":
        guess = {"method": "lora", "rank": config.get("r"), "alpha": config.get("alpha")}
    elif arch in (None, "bottleneck"):
        method = "double_seq_bn" if config.get("mh_adapter") and config.get("output_adapter") else "seq_bn"
        guess = {"method": method, "reduction_factor": config.get("reduction_factor")}
    else:
        guess = None
    if guess is not None:
        try:
            if adapter_config_for(AdapterConfig(**guess)).to_dict() == dict(config):
                return guess
        except (TypeError, ValueError, UsageError):  # pydantic's ValidationError is a ValueError
            pass  # not one of signmix's own settings: described in full below
    return {"method": "custom", "config": dict(config)}


@dataclass(frozen=True)
class ImportedAdapter:
    """An existing adapter turned into the store's form, in memory; nothing written yet.

    Attributes:
        label: the adapter's name in messages (its domain).
        source: where it came from: ``kind`` (``adapters``, ``hub``, ``peft``), ``location``,
            ``files`` (name -> sha256 of the source files) and conversion notes.
        adapter_config: ``adapter_config.json`` as ``adapters`` writes it, named ``ADAPTER_NAME``.
        weights: ``adapter.safetensors``' tensors (keys under ``ADAPTER_NAME``).
        head_config, head_weights: the head's ``head_config.json`` and tensors, or None.
    """

    label: str
    source: dict
    adapter_config: dict
    weights: dict[str, Tensor] = field(repr=False)
    head_config: dict | None = None
    head_weights: dict[str, Tensor] | None = field(default=None, repr=False)

    @property
    def config(self) -> dict:
        """The adapter's architecture (``adapter_config.json``'s ``config`` field)."""
        return self.adapter_config["config"]

    @property
    def has_head(self) -> bool:
        return self.head_weights is not None

    def fingerprint(self) -> str:
        """Returns a hash of the source files' hashes and the conversion: same files, same fingerprint."""
        payload = json.dumps({"kind": self.source["kind"], "files": self.source["files"],
                              "config": self.config}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def meta(self) -> dict:
        """Returns the ``signmix.json`` fields of this adapter (the caller adds labels and metrics)."""
        return {"domain": self.label, "fingerprint": self.fingerprint(),
                "base_model": self.adapter_config.get("model_name"),
                "adapter": signmix_settings(self.config), "source": dict(self.source),
                "has_head": self.has_head}

    def write(self, folder: str | Path) -> Path:
        """Write the adapter (and its head) into ``folder`` as ``adapters`` would; returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps(self.adapter_config, indent=2, sort_keys=True))
        save_file({k: v.contiguous() for k, v in self.weights.items()}, str(folder / ADAPTER_FILE),
                  metadata={"format": "pt"})
        if self.has_head:
            (folder / "head_config.json").write_text(json.dumps(self.head_config, indent=2, sort_keys=True))
            save_file({k: v.contiguous() for k, v in self.head_weights.items()}, str(folder / HEAD_FILE),
                      metadata={"format": "pt"})
        return folder

    def commit(self, store: AdapterStore, *, extra_meta: Mapping | None = None) -> Path:
        """Write this adapter into ``store`` under its label, complete or not at all; returns its folder.

        Raises:
            StoreError: it has no head (the store keeps only adapters with one: train a head
                on the domain's training split first).
        """
        if not self.has_head:
            raise StoreError(f"adapter {self.label!r} has no head; the store keeps adapters with their head: "
                             "train a head on the domain's training split with the adapter frozen first")
        staged = store.staging_dir(self.label)
        self.write(staged)
        return store.commit(self.label, staged, {**self.meta(), **dict(extra_meta or {})})


def from_model(model, *, label: str, source: dict) -> ImportedAdapter:
    """Returns the ``ADAPTER_NAME`` adapter (and head, if any) of an ``adapters`` model, read back
    from what ``save_adapter`` writes: the store's form by construction."""
    from safetensors.torch import load_file

    with_head = ADAPTER_NAME in getattr(model, "heads", {})
    with tempfile.TemporaryDirectory(prefix="signmix-import-") as tmp:
        model.save_adapter(tmp, ADAPTER_NAME, with_head=with_head, use_safetensors=True)
        folder = Path(tmp)
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = load_file(str(folder / ADAPTER_FILE))
        head_config = head_weights = None
        if with_head:
            head_config = json.loads((folder / "head_config.json").read_text())
            head_weights = load_file(str(folder / HEAD_FILE))
    return ImportedAdapter(label=label, source=source, adapter_config=config, weights=weights,
                           head_config=head_config, head_weights=head_weights)
