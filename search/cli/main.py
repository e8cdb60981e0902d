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
from pathlib import Path

from search.cli.console import load, preflight, progress
from search.interrupts import EXIT_STATUS, Interrupted, stop_on_sigterm
from spaces.errors import SignmixError, UsageError

logger = logging.getLogger("signmix")


def cmd_train(args) -> int:
    from search.runner import run_training

    cfg = load(args)
    preflight(cfg, "train")
    summary = run_training(cfg, force=args.force, progress=progress, debug=args.debug)
    print(f"{training_outcome(summary)}; store: {cfg.store_path}")
    for domain, err in summary.failed.items():
        print(f"failed: {domain}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0


def training_outcome(summary) -> str:
    """What ``signmix train`` did to each domain: trained, imported (head trained or as is), skipped, failed."""
    parts = [f"trained {len(summary.trained)} adapter(s) {sorted(summary.trained)}"]
    if summary.heads_trained:
        parts.append(f"imported {len(summary.heads_trained)} with a head trained on their data "
                     f"{sorted(summary.heads_trained)}")
    if summary.imported:
        parts.append(f"imported {len(summary.imported)} as they are {sorted(summary.imported)}")
    parts.append(f"skipped {len(summary.skipped)} {sorted(summary.skipped)}")
    if summary.failed:
        parts.append(f"failed {len(summary.failed)} {sorted(summary.failed)}")
    return ", ".join(parts) + f" in {summary.seconds:.1f}s"


def cmd_fsd(args) -> int:
    from search.reporting.tables import format_table, write_csv
    from trainables.store import load_sign_index

    cfg = load(args)
    preflight(cfg, "fsd", out=args.out)
    measures = _measure_names(args.measures)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    if measures:  # before anything is written: what the store or the data cannot give
        from search.conflict_measures import check_measures

        check_measures(cfg, measures)
    rows = [[name] + [float(index.matrix[i, j]) for j in range(len(index.names))] for i, name in enumerate(index.names)]
    print(format_table(rows, ["FSD"] + list(index.names)))
    from search.proposals.gate import evidence_from_mlflow

    evidence = evidence_from_mlflow(cfg)
    print()
    print("FSD gate evidence (evaluated mixtures of this experiment): " + (
        evidence.reason if evidence is not None else "no evaluated mixture yet; run `signmix search CONFIG`"))
    out = Path(args.out or os.path.join(cfg.storage_path, "fsd_matrix.csv"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, ["adapter", *index.names], [[r[0], *(f"{x:.6f}" for x in r[1:])] for r in rows])
    print(f"written: {out}")
    from search.store_imports import initialisation_lines

    for line in initialisation_lines(cfg, weights):
        print(line)
    if args.per_layer:
        from spaces.fsd import per_layer_fsd
        from trainables.store import AdapterStore, sign_weights

        signed = sign_weights(AdapterStore(cfg.store_path), weights)  # LoRA: ΔW per module
        pairs = [(a, b) for i, a in enumerate(index.names) for b in index.names[i + 1:]]
        per_pair = {pair: per_layer_fsd(signed[pair[0]], signed[pair[1]]) for pair in pairs}
        layers = sorted({layer for v in per_pair.values() for layer in v},
                        key=lambda name: (not name.startswith("layer."), int(name.split(".")[1]) if name.startswith("layer.") else 0))
        rows = [[f"{a}-{b}"] + [v.get(layer, float("nan")) for layer in layers] for (a, b), v in per_pair.items()]
        print()
        print(format_table(rows, ["pair"] + layers))
        layer_csv = write_csv(out.with_name(out.stem + "_per_layer.csv"), ["pair", *layers],
                              [[r[0], *(f"{x:.6f}" for x in r[1:])] for r in rows])
        print(f"written: {layer_csv}")
    if measures:
        from search.reporting.measures_report import measures_report

        for line in measures_report(cfg, measures, out=out, per_layer=args.per_layer, progress=progress,
                                    debug=args.debug):
            print(line)
    return 0


def _measure_names(text: str | None) -> list[str]:
    """``--measures`` as measure names (``all``: every one); a usage error naming the choices."""
    if text is None:
        return []
    from spaces.measures import check_measure_names

    try:
        return check_measure_names([t.strip() for t in text.split(",") if t.strip()], field_name="--measures")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_search(args) -> int:
    from search.runner import run_search

    cfg = load(args)
    preflight(cfg, "search")
    s = run_search(cfg, resume=args.resume, progress=progress, debug=args.debug)
    print(f"{s.strategy}: {s.evaluated} evaluated, {s.filtered} proposals filtered ({s.filtered_mixtures} mixtures), "
          f"{s.repeats} repeats, {s.stopped_early} stopped early, {s.failed} failed in {s.seconds:.1f}s")
    if s.best_label is not None:
        from search.baselines import search_summary_lines

        print(f"best: {s.best_label}  accuracy {s.best_accuracy:.4f}  (MLflow run {s.best_run_id})")
        # The baselines' validation accuracies come from the confirmation when it ran: not evaluated twice.
        confirmed = (s.confirmation or {}).get("validation_baselines")
        try:
            lines = search_summary_lines(cfg, s.best_run_id, confirmed)
        except KeyboardInterrupt:
            raise Interrupted(f"the search is complete in MLflow run {s.parent_run_id}"
                              + (" with its test-split confirmation" if s.confirmation else "")
                              + "; only the comparison with the baselines was stopped") from None
        for line in lines:
            print(line)
    from search.confirmation_decision import trust_lines

    for line in trust_lines(s):
        print(line)
    return 1 if s.failed and not s.evaluated else 0


def cmd_study(args) -> int:
    from search.study import run_study

    cfg = load(args)
    preflight(cfg, "study")
    s = run_study(cfg, progress=progress, debug=args.debug)
    parts = ", ".join(f"{n} {p}" for p, n in s.by_part.items())
    print(f"study: {s.mixtures} mixtures ({parts}): {s.evaluated} evaluated, {s.failed} failed in {s.seconds:.1f}s "
          f"(MLflow run {s.parent_run_id}); figures and statistics: `signmix report {args.config}`")
    return 1 if s.failed and not s.evaluated else 0


def cmd_plan(args) -> int:
    from search.plan.run import plan_lines, preflight_config, run_plan

    cfg = load(args)
    preflight(preflight_config(cfg), "search")
    outcome = run_plan(cfg, progress=progress, debug=args.debug)
    for line in plan_lines(outcome):
        print(line)
    return 0


def cmd_export(args) -> int:
    from search.export import check_output_dir, export_mixture

    if args.bodies is not None and not args.plan:
        raise UsageError("--bodies chooses a plan of the front: use it with --plan")
    cfg = load(args)
    check_output_dir(Path(args.out).resolve())
    preflight(cfg, "export")
    if args.plan:
        from search.plan.bundle import export_bundle

        out, record = export_bundle(cfg, args.out, run_id=args.run_id, bodies=args.bodies,
                                    register=not args.no_register)
        reg, chosen = record.get("registered_model"), record["served"]
        print(f"exported the plan of {chosen['bodies']} bodies for {len(record['domains'])} domains (test accuracy "
              f"{chosen['test']:.4f}) to {out}" + (f"; registered as {reg['name']} version {reg['version']}" if reg else ""))
        return 0
    out, record = export_mixture(cfg, args.out, run_id=args.run_id, register=not args.no_register,
                                 format=args.format)
    reg = record.get("registered_model")
    print(f"exported {'+'.join(record['members'])} (accuracy {record['metrics'].get('accuracy_mean', float('nan')):.4f}) "
          f"to {out}" + (f"; registered as {reg['name']} version {reg['version']}" if reg else ""))
    return 0


def cmd_evaluate(args) -> int:
    from search.export import evaluate_export
    from search.reporting.tables import format_table

    if (Path(args.export_dir) / "routing.json").is_file():
        return _evaluate_bundle(args)

    result = evaluate_export(args.export_dir, args.split)
    record, metrics = result["record"], result["metrics"]
    rows = []
    for t in record["targets"]:
        logged = record["metrics"].get(f"accuracy/{t}") if args.split == "validation" else None
        rows.append([t, metrics[f"accuracy/{t}"], metrics[f"macro_f1/{t}"], "-" if logged is None else logged])
    print(format_table(rows, ["target", f"{args.split} accuracy", "macro-F1", "logged accuracy"]))
    if args.split == "validation":
        mismatched = [t for t in record["targets"] if record["metrics"].get(f"accuracy/{t}") != metrics[f"accuracy/{t}"]]
        if mismatched:
            print(f"the accuracy on {mismatched} differs from the logged value", file=sys.stderr)
            return 1
        print("reproduces the logged validation accuracy exactly")
    return 0


def _evaluate_bundle(args) -> int:
    from search.plan.bundle import evaluate_bundle, logged_accuracy
    from search.reporting.tables import format_table

    result = evaluate_bundle(args.export_dir, args.split)
    logged, metrics, routing = logged_accuracy(result["plan"], args.split), result["metrics"], result["routing"]
    rows = [[d, routing["domains"][d]["body"], metrics[f"accuracy/{d}"], metrics[f"macro_f1/{d}"], logged.get(d, "-")]
            for d in sorted(routing["domains"])]
    print(format_table(rows, ["domain", "body", f"{args.split} accuracy", "macro-F1", "logged accuracy"]))
    # the same examples counted the same way: a real difference is at least one example (1/n)
    mismatched = [d for d in routing["domains"] if abs(logged[d] - metrics[f"accuracy/{d}"]) > 1e-9]
    if mismatched:
        print(f"the accuracy on {mismatched} differs from the logged value", file=sys.stderr)
        return 1
    print(f"reproduces every domain's logged {args.split} accuracy")
    return 0


def cmd_report(args) -> int:
    from search.reporting.report import build_report

    cfg = load(args)
    out = Path(args.out or os.path.join(cfg.storage_path, "report"))
    written = build_report(cfg, out, progress=progress)
    for path in written:
        print(f"written: {path}")
    if not written:
        print("no figure written: the experiment has no data yet (see the notes above)", file=sys.stderr)
        return 1
    return 0


def cmd_results(args) -> int:
    from search.reporting.results import format_results, top_mixtures

    cfg = load(args)
    print(format_results(top_mixtures(cfg, n=args.top, sort=args.sort), sort=args.sort))
    from search.confirmation import latest_confirmation
    from search.confirmation_decision import confirmation_lines

    record = latest_confirmation(cfg)
    if record is not None:
        print()
        for line in confirmation_lines(record):
            print(line)
    return 0


def cmd_demo(args) -> int:
    from search.cli.demo import run_demo  # on use: the demo's imports (the config, the runner) are heavy

    return run_demo(args)


def cmd_submit(args) -> int:
    from search.cli.submit import run_submit  # on use: Ray's job client is heavy

    return run_submit(args)


def cmd_server(args) -> int:
    from mlflow_server.cli import run_server

    return run_server(args)


def build_parser() -> argparse.ArgumentParser:
    from search.proposals.strategies import STRATEGIES

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
    p.add_argument("--strategy", choices=list(STRATEGIES),
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
    p.add_argument("--top", type=int, default=10, help="how many mixtures (default 10)")
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
