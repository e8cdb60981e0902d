"""The paths a submitted job reads on the head, checked on this machine before it is sent.

A job reads the config's paths on the head as this machine resolved them (``search.runtime.jobs``):
a relative path becomes an absolute path of this machine. One that does not exist even
here (a typo, a folder not copied yet) would fail the job on the head half a minute later;
it is refused before anything is sent. Absolute paths may name a mount that only the head
has, so they are listed for the user, not refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from search.settings.config import Config
from spaces.errors import UsageError


def _relative(value: object) -> bool:
    return isinstance(value, str) and "://" not in value and not os.path.isabs(os.path.expanduser(value))


def relative_paths(config_path: str | os.PathLike) -> dict[str, str]:
    """``{field: path as written}`` for the config's relative local paths: domain data, imported
    adapter folders (``path``, ``peft``) and ``store``."""
    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    found: dict[str, str] = {}
    for name, domain in (raw.get("domains") or {}).items():
        if not isinstance(domain, dict):
            continue
        if _relative(domain.get("path")):
            found[f"domains.{name}.path"] = domain["path"]
        adapter = domain.get("adapter")
        for key in ("path", "peft"):
            if isinstance(adapter, dict) and _relative(adapter.get(key)):
                found[f"domains.{name}.adapter.{key}"] = adapter[key]
    if _relative(raw.get("store")):
        found["store"] = raw["store"]
    return found


def check_local_paths(config_path: str | os.PathLike, *, command: str) -> None:
    """Raises :class:`UsageError` naming every relative path of the config that does not exist
    here (``store`` only for ``search`` and ``study``, which read it; ``train`` creates it)."""
    base = Path(config_path).resolve().parent
    missing = [f"{field} {value!r} ({base / os.path.expanduser(value)})"
               for field, value in relative_paths(config_path).items()
               if not (base / os.path.expanduser(value)).exists() and (field != "store" or command != "train")]
    if missing:
        raise UsageError(f"{config_path} names paths that do not exist here: {'; '.join(missing)}. The job reads "
                         "them on the head at these absolute paths, so they must exist there too (a folder the "
                         "head mounts at the same path): fix the paths, or put the files there")


def head_paths(cfg: Config) -> str:
    """The local paths the job reads or writes on the head, for one line to the user."""
    data = sorted(d.path for d in cfg.domains.values() if d.path)
    parts = ([f"data {', '.join(data)}"] if data else []) + [f"store {cfg.store_path}",
                                                             f"ray.storage_path {cfg.storage_path}"]
    return "; ".join(parts)
