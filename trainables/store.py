"""``AdapterStore``: a directory (local or shared storage) of trained domain adapters.

Layout, one folder per domain, written by ``adapters``' own ``save_adapter``/``save_head``
with safetensors, plus our ``signmix.json``::

    <root>/<domain>/adapter_config.json  adapter.safetensors
                    head_config.json     model_head.safetensors
                    signmix.json         (fingerprint, base model, method, labels, metrics)

Every adapter is saved under one internal name (``ADAPTER_NAME``), so the weight keys of
all adapters in a store are identical and mixing needs no key rewriting. A folder appears
only when complete: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from spaces.errors import StoreError
from spaces.fsd import SignIndex
from trainables.architecture import check_same_architecture
from trainables.lora_mixture import is_lora_weights, stored_lora_scaling

if TYPE_CHECKING:
    from torch import Tensor

ADAPTER_NAME = "signmix"
ADAPTER_FILE = "adapter.safetensors"
HEAD_FILE = "model_head.safetensors"
META_FILE = "signmix.json"


class AdapterStore:
    """Reads and writes the domain adapters of one experiment."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, domain: str) -> Path:
        return self.root / domain

    def domains(self) -> list[str]:
        """The domains with a complete adapter in the store, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file())

    def meta(self, domain: str) -> dict:
        """The ``signmix.json`` record of a stored adapter."""
        path = self.path(domain) / META_FILE
        if not path.is_file():
            raise StoreError(f"no adapter for domain {domain!r} in the store {self.root}; "
                             f"run `signmix train CONFIG` first (stored: {self.domains() or 'none'})")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} is corrupt ({exc}); delete {path.parent} and run `signmix train` again") from exc

    def has(self, domain: str, fingerprint: str) -> bool:
        """Whether ``domain`` is stored, complete, and was trained with these exact settings."""
        try:
            meta = self.meta(domain)
        except StoreError:
            return False
        folder = self.path(domain)
        return meta.get("fingerprint") == fingerprint and (folder / ADAPTER_FILE).is_file() \
            and ((folder / HEAD_FILE).is_file() or meta.get("has_head") is False)

    def load_weights(self, domain: str) -> dict[str, Tensor]:
        """The adapter's weights (not its head), keyed by parameter name; safetensors only."""
        return _load_safetensors(self.path(domain) / ADAPTER_FILE, domain)

    def load_head(self, domain: str) -> dict[str, Tensor]:
        return _load_safetensors(self.path(domain) / HEAD_FILE, domain)

    def adapter_config(self, domain: str) -> dict:
        """The stored adapter's architecture (``adapter_config.json``'s ``config`` field)."""
        path = self.path(domain) / "adapter_config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["config"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise StoreError(f"{path} cannot be read ({exc}); run `signmix train CONFIG --force` to "
                             f"store {domain!r} again") from exc

    def check_mixable(self, domains: Iterable[str]) -> list[dict]:
        """Check that these adapters can be averaged; returns their metadata.

        Raises:
            StoreError: an adapter is missing, or two adapters differ in base model,
                adapter method or configuration.
        """
        domains = list(domains)
        metas = [self.meta(d) for d in domains]
        if not metas:
            raise StoreError(f"the store {self.root} holds no adapters; run `signmix train CONFIG` first")
        first = metas[0]
        # Imported adapters (meta "source") are compared on their architecture itself, below.
        trained = [(d, m) for d, m in zip(domains, metas) if not m.get("source")]
        for d, m in zip(domains[1:], metas[1:]):
            keys = (("base_model", "base model"),) + ((("adapter", "adapter method/config"),)
                                                      if not m.get("source") and not first.get("source") else ())
            for key, what in keys:
                if m.get(key) != first.get(key):
                    raise StoreError(
                        f"adapters {domains[0]!r} and {d!r} cannot be mixed: their {what} differ "
                        f"({first.get(key)} vs {m.get(key)}); retrain them with one config "
                        "(`signmix train CONFIG --force`)")
        if len(trained) < len(domains):

            check_same_architecture({d: self.adapter_config(d) for d in domains})
        return metas

    def staging_dir(self, domain: str) -> Path:
        """A fresh temporary folder inside the store to write ``domain``'s adapter into."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".tmp-{domain}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def commit(self, domain: str, staged: Path, meta: dict) -> Path:
        """Write ``meta`` into ``staged`` and move it into place, replacing an older adapter.

        An imported adapter without a head (``meta["has_head"] is False``) can be a member of
        mixtures but not a target; every other adapter needs its head."""
        headless = meta.get("has_head") is False
        for name in (ADAPTER_FILE, "adapter_config.json") + (() if headless else (HEAD_FILE, "head_config.json")):
            if not (staged / name).is_file():
                raise StoreError(f"{staged} lacks {name}; the adapter was not saved completely")
        tmp_meta = staged / (META_FILE + ".tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp_meta, staged / META_FILE)
        final = self.path(domain)
        old = None
        if final.exists():
            old = self.root / f".old-{domain}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(staged, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all (a temporary sibling, then a rename):
    the store's caches (conflict measures, kept evaluations) are read by other processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_sign_index(root: str | os.PathLike, domains: Iterable[str]):
    """The adapters' weights and their :class:`~spaces.fsd.SignIndex`, from the store at ``root``
    (checked mixable); raises StoreError naming a missing adapter or why they cannot be mixed."""

    store = AdapterStore(root)
    domains = sorted(domains)
    missing = [d for d in domains if d not in store.domains()]
    if missing:
        raise StoreError(f"the store {store.root} has no adapter for {missing}; run `signmix train CONFIG` first")
    store.check_mixable(domains)
    weights = {d: store.load_weights(d) for d in domains}
    # One adapter's ΔW (LoRA) at a time: the index packs each to bits as it is made, so the
    # ΔW of all adapters (much larger than their factors) never exist at once.
    signed = ((d, sign_weights(store, {d: weights[d]})[d]) for d in domains)
    try:
        return weights, SignIndex.from_weights(signed)
    except ValueError as exc:
        raise StoreError(f"the stored adapters cannot be mixed: {exc}; retrain them with one config "
                         "(`signmix train CONFIG --force`)") from exc


def sign_weights(store: AdapterStore, weights: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """What FSD compares: each LoRA's update ΔW = B·A·alpha/r per adapted module (the signs of
    A and B alone are not determined: B·A = (-B)·(-A)); any other adapter's own weights."""

    if not weights or not all(is_lora_weights(w) for w in weights.values()):
        return weights

    from trainables.lora import lora_delta_weights  # torch: imported where tensors are made

    return {d: lora_delta_weights(w, scaling=stored_lora_scaling(store.path(d))) for d, w in weights.items()}


def _load_safetensors(path: Path, domain: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise StoreError(f"{path} is missing: the adapter of {domain!r} is incomplete; "
                         f"run `signmix train CONFIG --force` to retrain it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc}); the file is truncated or corrupt: "
                         f"run `signmix train CONFIG --force` to retrain {domain!r}") from exc
