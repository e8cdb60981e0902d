"""Reading an adapter's files safely: JSON configs, safetensors, and pickles only when allowed.

Every failure is a :class:`~spaces.errors.StoreError` (exit 2) that names the adapter, the
file, what is wrong and the fix; nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from spaces.errors import StoreError
from trainables.imports.pickle_scan import pickle_calls

if TYPE_CHECKING:
    from torch import Tensor


def read_config(path: Path, label: str) -> dict:
    """Returns the JSON object in ``path``; StoreError naming the adapter when it is missing or not JSON."""
    if not path.is_file():
        raise StoreError(f"adapter {label!r}: {path.name} is missing in {path.parent}; point the adapter at the "
                         f"folder that holds {path.name} and its weights")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"adapter {label!r}: {path} is not valid JSON ({exc}); the file is corrupt: "
                         "copy the adapter again from its source") from exc
    if not isinstance(value, dict):
        raise StoreError(f"adapter {label!r}: {path} holds a JSON {type(value).__name__}, not an object; "
                         "copy the adapter again from its source")
    return value


def weights_file(folder: Path, label: str, *, safetensors_name: str, pickle_name: str,
                 allow_pickle: bool, what: str = "weights") -> Path:
    """Returns the file holding ``what``: the safetensors file, else the pickle when ``allow_pickle``.

    A pickle is never opened here. Refusing it before anything reads it is the point:
    unpickling runs whatever code the file carries.

    Raises:
        StoreError: only a pickle exists and ``allow_pickle`` is false, or neither file exists.
    """
    safe, pickled = folder / safetensors_name, folder / pickle_name
    if safe.is_file():
        return safe
    if pickled.is_file():
        if not allow_pickle:
            raise StoreError(
                f"adapter {label!r}: its {what} are only in the pickle file {pickled} (no {safetensors_name}); "
                "opening a pickle can run any code it carries, so signmix refuses it. Fix: convert it to "
                f"{safetensors_name}, or, if you trust where it comes from, set `allow_pickle: true` for this adapter")
        return pickled
    raise StoreError(f"adapter {label!r}: no {what} in {folder} (neither {safetensors_name} nor {pickle_name}); "
                     "point the adapter at the folder its library saved")


def load_tensors(path: Path, label: str) -> dict[str, Tensor]:
    """Returns the tensors in a safetensors file, or in an allowed pickle (loaded ``weights_only``).

    Raises:
        StoreError: the file is truncated or corrupt (named, with the fix), or the pickle holds
            anything but tensors (``torch.load(weights_only=True)`` refuses code even when
            pickles are allowed).
    """
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        if path.suffix != ".safetensors":
            calls = pickle_calls(path)
            if calls:
                raise StoreError(
                    f"adapter {label!r}: {path} is a pickle that would call {', '.join(calls)} on load: not plain "
                    "tensors, refused (signmix opens pickles with torch's safe reader only, allow_pickle or not). "
                    "Fix: get the adapter's weights as safetensors from a source you trust, or leave it out") from None
        raise StoreError(f"adapter {label!r}: {path} cannot be read ({_reason(exc)}); the file is truncated, corrupt "
                         "or not plain tensors: copy the adapter again from its source") from exc


def _reason(exc: BaseException) -> str:
    """The line of a load error that says what is wrong; torch's advice to load unsafely is left out."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's refusal: the words before it tell users to disable it
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return f"torch's safe reader: {detail[0].strip()}" if detail else "refused by torch's safe reader"
    return text.splitlines()[0] if text else type(exc).__name__


def sha256_of(path: Path) -> str:
    """Returns the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path, names: list[str]) -> dict[str, str]:
    """Returns ``{name: sha256}`` for the files of ``names`` that exist in ``folder``."""
    return {name: sha256_of(folder / name) for name in sorted(names) if (folder / name).is_file()}


def check_folder(folder: Path, label: str) -> Path:
    """Returns ``folder`` as a Path; StoreError when it is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise StoreError(f"adapter {label!r}: {folder} {what}; give the folder the adapter was saved into")
    return folder
