"""The first step of a ``signmix submit`` job: does the head's ``python`` have signmix's dependencies?

A Ray Job's entrypoint runs ``python`` from the PATH of the process that started the head.
A head started with the environment's ``ray`` but without the environment on its PATH ran
another Python, which failed 14 s later with a 20-line ``ModuleNotFoundError``. This step
looks the modules up without importing them (standard library only: it runs before
anything is known about that Python) and, when some are missing, prints one line naming
them, the interpreter, and how to start the head, and exits with 2.

Usage (written by :func:`search.runtime.jobs.submit_job`): ``python -m search.cli.head_python MODULE...``
"""

from __future__ import annotations

import importlib.util
import sys

HEAD_HINT = ("start the head from signmix's environment, so that its `python` is the environment's: "
             "`source VENV/bin/activate` (or `export PATH=VENV/bin:$PATH`), then `ray start --head "
             "--dashboard-host 0.0.0.0`")


def missing_modules(names: list[str]) -> list[str]:
    """The names of ``names`` that this Python cannot import (looked up, not imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def main(argv: list[str]) -> int:
    missing = missing_modules(argv)
    if not missing:
        return 0
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"signmix: error: the head runs this job with {sys.executable} (Python {version}), which lacks "
          f"signmix's dependencies {', '.join(missing)}; {HEAD_HINT}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
