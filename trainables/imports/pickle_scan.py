"""What a pickle would call when loaded, read from its opcodes without loading it.

``torch.load(weights_only=True)`` refuses a pickle that imports anything but tensors, and
says so in words meant for torch's users ("re-run with ``weights_only=False``"), which is
the one thing an adapter's user must not do. :func:`pickle_calls` names the callables the
file would import instead, so the refusal can say what was found. Nothing is executed:
:func:`pickletools.genops` only decodes opcodes.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

# What torch's own files import: the tensor rebuilders, storages, dtypes, OrderedDict.
_TORCH_SAVED = ("torch.", "collections.OrderedDict", "_codecs.encode")
_MAX_PICKLES = 8  # a legacy torch file is a few pickles in a row, then raw storage bytes
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the pickles at the start of ``data``."""
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(_MAX_PICKLES):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in _STRING_OPS:
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", ".", 1))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except (ValueError, EOFError, IndexError, UnicodeDecodeError):
            break  # the raw bytes after the last pickle, or a truncated file
        if stream.tell() >= len(data):
            break
    return found


def pickle_calls(path: Path) -> list[str]:
    """Returns the callables (``module.name``, e.g. ``posix.system``) that loading the pickle
    at ``path`` would import, other than what ``torch.save`` writes; sorted, without repeats.

    Reads a plain pickle, a legacy ``torch.save`` file, or the ``*.pkl`` members of a
    ``torch.save`` zip archive. Never loads anything.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blobs = [archive.read(name) for name in archive.namelist() if name.endswith(".pkl")]
    else:
        blobs = [path.read_bytes()]
    names = {name for blob in blobs for name in _globals(blob)}
    return sorted(name for name in names if not name.startswith(_TORCH_SAVED))
