"""The demo's first part: a serving plan over its own five domains, exported as a bundle.

Four review domains and a 3-way support task: one merged body for all five, or two? The
plan answers on validation, confirms on test, and this module says what it saves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from search.settings.config import Config
from search.plan.bundle import export_bundle
from search.plan.serving_plan import plan_lines, run_plan
from trainables.store import ADAPTER_FILE, HEAD_FILE, AdapterStore


def bundle_bytes(bundle: Path) -> int:
    """Bytes of a bundle's weights: its bodies' adapters, the domains' heads, masks and the shared
    initialisation (where a domain has a mask)."""
    bodies = sum(f.stat().st_size for f in (bundle / "bodies").glob("*/adapter.safetensors"))
    masks = sum(f.stat().st_size for f in [*(bundle / "masks").glob("*.safetensors"), bundle / "init.safetensors"]
                if f.is_file())
    return bodies + masks + sum(f.stat().st_size for f in (bundle / "heads").glob("*/model_head.safetensors"))


def separate_bytes(cfg: Config, domains) -> int:
    """Bytes of serving each domain with its own adapter and head (the stored files)."""
    store = AdapterStore(cfg.store_path)
    return sum((store.path(d) / name).stat().st_size for d in domains for name in (ADAPTER_FILE, HEAD_FILE))


def serve_demo_domains(cfg: Config, out: Path, *, progress: Callable[[str], None], debug: bool = False) -> list[str]:
    """Plan the demo's domains, export the chosen plan to ``out/bundle``; returns the lines to print."""
    outcome = run_plan(cfg, progress=progress, debug=debug)
    staged = out / ".bundle-new"
    shutil.rmtree(staged, ignore_errors=True)
    export_bundle(cfg, staged)
    if (out / "bundle").exists():
        shutil.rmtree(out / "bundle")
    os.replace(staged, out / "bundle")
    rec = outcome.record
    n, g = len(rec["domains"]), rec["chosen"]["bodies"]
    bound = rec["references"]["own adapters, trained heads (bound)"]
    shipped, separate = bundle_bytes(out / "bundle"), separate_bytes(cfg, rec["domains"])
    return [*plan_lines(outcome), "",
            f"what it saves: {n} domains served by {g} adapter bod{'y' if g == 1 else 'ies'} instead of {n} adapters, "
            f"{shipped:,} bytes of weights against {separate:,} ({100 * (1 - shipped / separate):.0f}% less), "
            f"at {rec['chosen']['test']:.4f} mean test accuracy against {bound['test']:.4f} for the {n} own adapters "
            f"({100 * (rec['chosen']['test'] - bound['test']):+.1f} points)",
            "the worst domain on test: {} {:+.1f} points against its own adapter".format(
                *min(((d, 100 * (a - bound["test_by_domain"][d])) for d, a in rec["chosen"]["test_by_domain"].items()),
                     key=lambda x: (x[1], x[0]))),
            f"bundle exported to {out / 'bundle'} (`signmix evaluate {out / 'bundle'} --split test` reproduces it)"]
