"""Importing adapters saved by ``adapters`` itself: a local folder, or a hub id through
``adapters``' own hub resolution, loaded by ``model.load_adapter`` under ``ADAPTER_NAME``."""

from __future__ import annotations

import logging
from pathlib import Path

from spaces.errors import StoreError
from trainables.imports.files import check_folder, file_hashes, load_tensors, read_config, weights_file
from trainables.imports.store_form import (
    BaseModelFacts,
    ImportedAdapter,
    base_model_facts,
    check_base_model,
    from_model,
    layers_of,
)
from trainables.model import load_encoder
from trainables.store import ADAPTER_FILE, ADAPTER_NAME, HEAD_FILE

logger = logging.getLogger(__name__)

_SOURCE_FILES = ["adapter_config.json", ADAPTER_FILE, "pytorch_adapter.bin",
                 "head_config.json", HEAD_FILE, "pytorch_model_head.bin"]


def _check_adapters_folder(folder: Path, label: str, base: BaseModelFacts, *, allow_pickle: bool,
                           with_head: bool, check_name: bool) -> bool:
    """Check every file and the base model before anything loads; returns whether a head will be imported."""
    config = read_config(folder / "adapter_config.json", label)
    if not isinstance(config.get("config"), dict):
        raise StoreError(f"adapter {label!r}: {folder / 'adapter_config.json'} has no 'config' object; it was not "
                         "written by `adapters`' save_adapter (a PEFT folder? use `adapter: {peft: ...}`)")
    weights = load_tensors(weights_file(folder, label, safetensors_name=ADAPTER_FILE,
                                        pickle_name="pytorch_adapter.bin", allow_pickle=allow_pickle), label)
    if not weights:
        raise StoreError(f"adapter {label!r}: the weights file in {folder} holds no tensors; "
                         "copy the adapter again from its source")
    leave_out = set(config["config"].get("leave_out") or [])
    layers = layers_of(weights)
    check_base_model(label, base, model_type=config.get("model_type"), hidden_size=config.get("hidden_size"),
                     layers=layers, expected_layers=set(range(base.num_hidden_layers)) - leave_out if layers else None,
                     model_name=config.get("model_name"), check_name=check_name)
    has_head = with_head and (folder / "head_config.json").is_file()
    if has_head:
        head = read_config(folder / "head_config.json", label)
        load_tensors(weights_file(folder, label, safetensors_name=HEAD_FILE, pickle_name="pytorch_model_head.bin",
                                  allow_pickle=allow_pickle, what="head weights"), label)
        check_base_model(label, base, model_type=head.get("model_type"), hidden_size=head.get("hidden_size"),
                         check_name=False)
    return has_head


def read_adapters_folder(folder: str | Path, *, label: str, base_model: str, allow_pickle: bool = False,
                         with_head: bool = True, check_name: bool = True, trust_remote_code: bool = False,
                         source: dict | None = None) -> ImportedAdapter:
    """Returns the adapter that ``adapters``' ``save_adapter`` wrote into ``folder``, renamed to ``ADAPTER_NAME``.

    Its files and its fit to ``base_model`` are checked first (:func:`check_base_model`;
    pickles refused unless ``allow_pickle``); then ``adapters``' own ``load_adapter``
    loads it, and its head when ``with_head`` and the folder has one, into a fresh
    ``base_model``, whatever name it was saved under.

    Raises:
        StoreError: a missing or corrupt file, a refused pickle, another base model.
    """

    folder = check_folder(folder, label)
    base = base_model_facts(base_model, trust_remote_code=trust_remote_code)
    has_head = _check_adapters_folder(folder, label, base, allow_pickle=allow_pickle, with_head=with_head,
                                      check_name=check_name)
    model, _ = load_encoder(base_model, trust_remote_code=trust_remote_code)
    info: dict = {}
    model.load_adapter(str(folder), load_as=ADAPTER_NAME, with_head=has_head, use_safetensors=True,
                       loading_info=info)
    missing = [k for k in info.get("missing_keys", []) if f".{ADAPTER_NAME}." in k or k.startswith("heads.")]
    unexpected = info.get("unexpected_keys", [])
    if missing or unexpected:
        odd = (missing or unexpected)[:3]
        raise StoreError(f"adapter {label!r}: its weights do not fit its adapter_config.json on base_model "
                         f"{base_model!r} ({'missing' if missing else 'unexpected'}: {odd}); the folder is "
                         "inconsistent: copy the adapter again from its source")
    source = {"kind": "adapters", "location": str(folder), **(source or {}),
              "saved_name": read_config(folder / "adapter_config.json", label).get("name"),
              "files": file_hashes(folder, _SOURCE_FILES)}
    return from_model(model, label=label, source=source)


def read_hub_adapter(adapter_id: str, *, label: str, base_model: str, version: str | None = None,
                     allow_pickle: bool = False, with_head: bool = True, check_name: bool = True,
                     trust_remote_code: bool = False) -> ImportedAdapter:
    """Returns the adapter ``adapter_id`` names on the hub, resolved by ``adapters``' own hub code.

    ``adapters.utils.resolve_adapter_path`` is what ``model.load_adapter`` calls first: a
    Hugging Face hub id (downloaded into the hub cache), an archived AdapterHub name, a URL,
    or a local folder. The resolved folder is then checked and loaded like
    :func:`read_adapters_folder`, so a pickle is refused before anything opens it.
    """
    from adapters.utils import resolve_adapter_path

    try:
        folder = resolve_adapter_path(adapter_id, base_model, version=version)
    except (OSError, ValueError) as exc:
        raise StoreError(f"adapter {label!r}: hub id {adapter_id!r} cannot be resolved ({str(exc).splitlines()[0]}); "
                         "check the id, or, on a machine without the hub, download the adapter and use "
                         "`adapter: {path: FOLDER}`") from exc
    logger.info("adapter %r: hub id %r resolved to %s", label, adapter_id, folder)
    return read_adapters_folder(folder, label=label, base_model=base_model, allow_pickle=allow_pickle,
                                with_head=with_head, check_name=check_name, trust_remote_code=trust_remote_code,
                                source={"kind": "hub", "id": adapter_id, "version": version})
