"""What each ``signmix`` command does: parse nothing, validate, call the library, show the result.

``search/cli/main.py`` builds the parser and turns errors into exit codes; each ``cmd_<name>``
here receives the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from search.cli.console import load, preflight, progress
from search.runtime.interrupts import Interrupted
from spaces.errors import UsageError

logger = logging.getLogger("signmix")


def cmd_train(args) -> int:
    cfg = load(args)
    preflight(cfg, "train")
    from search.workflows.adapter_training import run_training  # heavy (Ray Tune, torch): after the checks, so that a bad config is told at once
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
    from search.tracking.tables import format_table, write_csv
    from trainables.store import load_sign_index

    cfg = load(args)
    preflight(cfg, "fsd", out=args.out)
    measures = _measure_names(args.measures)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    if measures:  # before anything is written: what the store or the data cannot give
        from search.workflows.conflict_measures import check_measures

        check_measures(cfg, measures)
    rows = [[name] + [float(index.matrix[i, j]) for j in range(len(index.names))] for i, name in enumerate(index.names)]
    print(format_table(rows, ["FSD"] + list(index.names)))
    from search.proposals.fsd_gate import evidence_from_mlflow

    evidence = evidence_from_mlflow(cfg)
    print()
    print("FSD gate evidence (evaluated mixtures of this experiment): " + (
        evidence.reason if evidence is not None else "no evaluated mixture yet; run `signmix search CONFIG`"))
    out = Path(args.out or os.path.join(cfg.storage_path, "fsd_matrix.csv"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, ["adapter", *index.names], [[r[0], *(f"{x:.6f}" for x in r[1:])] for r in rows])
    print(f"written: {out}")
    from search.workflows.store_imports import initialisation_lines

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
    cfg = load(args)
    preflight(cfg, "search")
    from search.workflows.mixture_search import run_search  # heavy (Ray Tune, torch): after the checks, so that a bad config is told at once
    s = run_search(cfg, resume=args.resume, progress=progress, debug=args.debug)
    print(f"{s.strategy}: {s.evaluated} evaluated, {s.filtered} proposals filtered ({s.filtered_mixtures} mixtures), "
          f"{s.repeats} repeats, {s.stopped_early} stopped early, {s.failed} failed in {s.seconds:.1f}s")
    if s.best_label is not None:
        from search.workflows.baselines import search_summary_lines

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
    from search.workflows.confirmation_decision import trust_lines

    for line in trust_lines(s):
        print(line)
    return 1 if s.failed and not s.evaluated else 0


def cmd_study(args) -> int:
    cfg = load(args)
    preflight(cfg, "study")
    from search.workflows.study import run_study  # heavy (Ray Tune, torch): after the checks, so that a bad config is told at once
    s = run_study(cfg, progress=progress, debug=args.debug)
    parts = ", ".join(f"{n} {p}" for p, n in s.by_part.items())
    print(f"study: {s.mixtures} mixtures ({parts}): {s.evaluated} evaluated, {s.failed} failed in {s.seconds:.1f}s "
          f"(MLflow run {s.parent_run_id}); figures and statistics: `signmix report {args.config}`")
    return 1 if s.failed and not s.evaluated else 0


def cmd_plan(args) -> int:
    from search.plan.serving_plan import plan_lines, preflight_config, run_plan

    cfg = load(args)
    preflight(preflight_config(cfg), "search")
    outcome = run_plan(cfg, progress=progress, debug=args.debug)
    for line in plan_lines(outcome):
        print(line)
    return 0


def cmd_export(args) -> int:
    from search.workflows.export import check_output_dir, export_mixture

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
              f"{chosen['test']:.4f}) to {out}" + (f"; registered as {reg['name']} version {reg['version']} "
                                                    f"(serve it: models:/{reg['name']}@{reg['alias']})" if reg else ""))
        return 0
    out, record = export_mixture(cfg, args.out, run_id=args.run_id, register=not args.no_register,
                                 format=args.format)
    reg = record.get("registered_model")
    print(f"exported {'+'.join(record['members'])} (accuracy {record['metrics'].get('accuracy_mean', float('nan')):.4f}) "
          f"to {out}" + (f"; registered as {reg['name']} version {reg['version']} "
                         f"(serve it: models:/{reg['name']}@{reg['alias']})" if reg else ""))
    return 0


def cmd_evaluate(args) -> int:
    from search.workflows.export import evaluate_export
    from search.tracking.tables import format_table

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
    from search.tracking.tables import format_table

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
    targets = [t for t in (args.targets or "").split(",") if t]
    print(format_results(top_mixtures(cfg, n=args.top, sort=args.sort, targets=targets), sort=args.sort))
    from search.workflows.confirmation import latest_confirmation
    from search.workflows.confirmation_decision import confirmation_lines

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
