"""What every command shares: its progress lines, the config with the command-line overrides
validated like the file, and the checks before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

# The config (pydantic) and the checks (torch, through the store) are imported on use: `signmix --help`
# imports this module and stays well under a second.


def progress(line: str) -> None:
    """What a command shows while it works: one line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def load(args):
    """The validated config, with the command-line overrides validated like the file."""
    from search.settings.config import load_config, validate_config

    cfg = load_config(args.config)
    updates: dict[str, dict] = {}
    if getattr(args, "address", None):
        updates["ray"] = {"address": args.address}
    search = {k: v for k, v in (("strategy", getattr(args, "strategy", None)),
                                ("num_mixtures", getattr(args, "num_mixtures", None))) if v is not None}
    if search:
        updates["search"] = search
    if not updates:
        return cfg
    raw = cfg.model_dump()
    for section, values in updates.items():
        raw[section] = {**raw[section], **values}
    return validate_config(raw, source=f"{args.config} with the command-line options",
                           base_dir=Path(args.config).resolve().parent)


def preflight(cfg, command: str, **kwargs) -> None:
    """Fail before anything starts (Ray, MLflow runs, files) when the run could not succeed."""
    from search.cli.preflight import check_before_run

    check_before_run(cfg, command=command, **kwargs)
