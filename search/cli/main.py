"""The ``signmix`` command: parse, validate, call the library, show the result.

Usage errors (bad config, missing adapters, ...) print one message and exit with 2;
runtime failures exit with 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from search.cli.commands import (
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_fsd,
    cmd_plan,
    cmd_report,
    cmd_results,
    cmd_search,
    cmd_server,
    cmd_study,
    cmd_submit,
    cmd_train,
)
from search.runtime.interrupts import EXIT_STATUS, Interrupted, stop_on_sigterm
from spaces.errors import SignmixError


def build_parser() -> argparse.ArgumentParser:
    from search.settings.choices import STRATEGY_NAMES

    parser = argparse.ArgumentParser(prog="signmix", description=(
        "Find the best mixture of domain adapters: Ray Tune trials, Optuna proposals behind a "
        "sign-conflict (FSD) pre-filter, MLflow tracking."))
    parser.add_argument("--debug", action="store_true", help="show tracebacks and worker logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name, help_, func):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("config", help="the experiment's YAML config")
        p.set_defaults(func=func)
        return p

    p = with_config("train", "train one adapter per domain (skips adapters already trained with these settings)", cmd_train)
    p.add_argument("--force", action="store_true", help="retrain every domain")
    p.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    p = with_config("fsd", "print the pairwise FSD matrix of the stored adapters and write it as CSV", cmd_fsd)
    p.add_argument("--out", help="CSV path (default: <storage_path>/fsd_matrix.csv)")
    p.add_argument("--per-layer", action="store_true", help="also the FSD of every pair per layer (<out>_per_layer.csv)")
    p.add_argument("--measures", metavar="NAMES",
                   help="also these conflict measures, comma-separated, or all (weight_fsd, delta_fsd, activation_fsd, "
                        "cross_head, merge_gap): each matrix and, over the evaluated mixtures, its correlation with "
                        "accuracy, best first")
    p = with_config("search", "search mixtures with Ray Tune, behind the sign-conflict pre-filter", cmd_search)
    p.add_argument("--strategy", choices=list(STRATEGY_NAMES),
                   help="overrides search.strategy")
    p.add_argument("--num-mixtures", type=int, help="overrides search.num_mixtures")
    p.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest interrupted search of this config (after a crash or kill)")
    p = with_config("study", "run the paper's experiments: every subset, the sparsity sweep, sparse mixing (Alg. 4)",
                    cmd_study)
    p.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    p = with_config("plan", "find the few merged bodies that serve every domain (a serving plan per number of "
                    "bodies, against the N own adapters)", cmd_plan)
    p.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    p = with_config("export", "export the best (or a given) mixture as an adapters adapter", cmd_export)
    p.add_argument("--out", required=True, help="new folder to write the export into")
    p.add_argument("--run-id", help="export this MLflow run instead of the best (with --plan: this plan run)")
    p.add_argument("--plan", action="store_true",
                   help="export the newest serving plan (`signmix plan`) as a bundle: bodies, heads, routing.json")
    p.add_argument("--bodies", type=int, help="with --plan: the front's best plan of this many bodies, not the chosen one")
    p.add_argument("--format", choices=("adapters", "peft"), default="adapters",
                   help="adapters (default): an `adapters` folder; peft: a PEFT LoRA folder (LoRA mixtures)")
    p.add_argument("--no-register", action="store_true", help="do not register a model version")
    p = with_config("report", "draw the experiment's figures (PNG + CSV) and log them to its MLflow run", cmd_report)
    p.add_argument("--out", help="folder for the figures (default: <storage_path>/report)")
    p = with_config("results", "print the best evaluated mixtures of the experiment", cmd_results)
    p.add_argument("--top", type=int, default=10, help="how many mixtures of each target set (default 10)")
    p.add_argument("--targets", metavar="T1,T2", help="only the mixtures of exactly these targets (a mean over targets "
                   "compares mixtures of the same targets only; by default one table per target set)")
    p.add_argument("--sort", default="accuracy_mean", metavar="METRIC",
                   help="an MLflow metric: accuracy_mean (default), accuracy/<target>, fsd, sparsity, "
                        "robust_accuracy_mean, bb_robust_accuracy_mean, ...; highest first, FSD, times and "
                        "bb_attack_success lowest first")
    p = sub.add_parser("evaluate", help="evaluate an exported mixture on its targets, or a plan's bundle on every domain")
    p.add_argument("export_dir")
    p.add_argument("--split", choices=["validation", "test"], default="validation")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("demo", help="run the embedded default end to end (offline, CPU)")
    p.add_argument("--out", default="demo_out", help="folder for data, adapters, MLflow store and export")
    p.add_argument("--tracking-uri", help="log to this MLflow tracking URI instead of DIR/mlflow.db")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data, training and search")
    p.add_argument("--base-model", help="another encoder (hub id or local folder) instead of MiniLM-L6")
    p.add_argument("--num-mixtures", type=int, default=12, help="mixtures to evaluate (default 12)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("submit", help="run search (or train, study) on a remote Ray cluster as a Ray Job",
                       description="submit CONFIG as a Ray Job and stream its log (exit 0: succeeded, 1: failed or "
                                   "stopped); or show (--status) or stop (--stop) a job")
    p.add_argument("config", nargs="?", help="the experiment's YAML config (its paths must exist on the head)")
    p.add_argument("--address", required=True, help="the head's Ray dashboard, e.g. http://HEAD:8265")
    p.add_argument("--command", choices=["search", "train", "study"], default="search",
                   help="the signmix command the job runs (default: search)")
    p.add_argument("--no-wait", action="store_true", help="submit and return the job id (the job keeps running)")
    p.add_argument("--resume", action="store_true", help="the job continues the newest stopped search of CONFIG")
    p.add_argument("--status", metavar="JOB", help="show a job's status and last lines (exit 0: succeeded, 1: "
                                                   "failed or stopped, 3: pending or running)")
    p.add_argument("--stop", metavar="JOB", help="stop a job")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("server", help="start an MLflow tracking server (loopback by default)")
    from mlflow_server.cli import add_server_arguments

    add_server_arguments(p)
    p.set_defaults(func=cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The tracking client's "server unreachable ... answers again" lines are for the user.
    logging.getLogger("search.tracking.mlflow_client").setLevel(logging.INFO)
    if not args.debug:
        # Progress bars of `datasets` (loading, filtering) would bury the one line that matters.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        # adapters warns "none are activated" while heads are swapped; it is not a problem.
        logging.getLogger("adapters").setLevel(logging.ERROR)
    stop_on_sigterm()  # SIGTERM stops a command as Ctrl-C does: what was kept is said, exit 130
    try:
        return args.func(args)
    except SignmixError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"signmix: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A file system or network failure no check foresaw (disk full, permissions changed).
        if args.debug:
            traceback.print_exc()
        print(f"signmix: error: {exc}; run `signmix --debug ...` for the traceback", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: an Interrupted says what was kept; a bare one came before anything started.
        print("signmix: interrupted" + (f": {exc}" if isinstance(exc, Interrupted) else ""), file=sys.stderr)
        return EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
