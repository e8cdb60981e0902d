"""Issue 33: with the defaults, is the exported mixture ever significantly worse on test than TIES of
all or the soup that the same search scored? And how many multi-adapter mixtures score near chance?

The library: the 4 Amazon domains' adapters of ``make plan-real`` (MiniLM-L6 ``seq_bn``, reduction
16, 400 training examples, 2 epochs, seed 0), copied from ``--library`` into ``<work>/library``; the
base model, adapter and training sections are read from that store's config (``--library-config``,
``.bench/plan-real/reviews12+tasks4.yaml``), so the fingerprints match: ``run_training`` must skip
all four (the script stops when it would train one). Data: ``../shared/data/amazon_multidomain``.

Runs: one-target searches (each domain the target) and two-target searches (books+dvd,
electronics+kitchen), each with ``num_mixtures`` 4 and 12, everything else the product's defaults
(the search section names only ``targets``, ``num_mixtures`` and ``seed: 0``: TPE with the greedy
warm start, activation-FSD conflict gate with ``max_fsd: auto``, merge methods TIES first, own heads,
the soup and TIES of all competing for the export on validation, the test-split confirmation on).
Each run has its own copy of the library (no evaluation kept by an earlier run is read), its own
Ray storage and MLflow store under ``<work>/runs/<targets>-<budget>``.

Per run, from the product's records: the exported mixture (the confirmation's choice, what
``signmix export`` writes), its validation accuracy (its MLflow mixture run) and test accuracy; the
soup's and TIES of all's validation accuracy (the confirmation record's ``validation_baselines``)
and test accuracy; the paired difference exported - baseline on test with its 95% interval. The
record holds the soup's test accuracy and interval but no paired interval against either baseline,
and TIES of all is scored on validation only (unless exported): so both are computed here as the
confirmation computes its leads (:func:`trainables.significance.mean_difference`, stratified by
target, seed ``search.seed``, 95%) from the per-row test correctness, which the confirmation kept in
the store (``<store>/.correctness``); TIES of all's test rows are scored after the search by the
confirmation's own trials (:func:`search.workflows.confirmation_passes.run_confirmation_trials`),
outside the search's wall time. "Significantly worse": the interval's upper end below 0. And over the
search's evaluated mixtures of 2+ members (its MLflow mixture runs, baselines the confirmation logged
left out), how many scored within 5 points of chance on validation: mean validation accuracy at most
chance + 0.05, chance = the mean over the targets of 1 / number of labels (every accuracy is kept in
``results.jsonl``, so another rule can be applied with ``--table-only``).

Results are appended to ``<work>/results.jsonl`` as each run finishes (a rerun skips what is there),
the tables written to ``<work>/table.md``; ``--table-only`` prints them without running anything.

Run: ``make defaults-real`` (12 searches), under ``flock /tmp/signmix-measure.lock`` on a shared
machine. ``--targets books books+dvd`` and ``--budgets 4`` run a subset; the tables say what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import yaml
# the config written into its folder and loaded; what a search evaluated (this script's folder is on sys.path)
from new_domain_real import CHANCE_MARGIN, load, searched_mixtures

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
AMAZON = ("books", "dvd", "electronics", "kitchen")
RUNS = ("books", "dvd", "electronics", "kitchen", "books+dvd", "electronics+kitchen")
SEED = 0
# `--previous-defaults`: the search defaults before issue 33 (the uniform average first, so the greedy
# warm start walks averages; the pre-filter on weight FSD), for the near-chance share "before"; the
# soup and TIES of all still compete for the export, which is not a setting.
PREVIOUS_DEFAULTS = {"merge_methods": ["average", "ties", "task_arithmetic", "dare_ties"],
                     "conflict_measure": "weight_fsd"}
TIES_OF_ALL = "ties_of_all"  # search.workflows.baselines.TIES_OF_ALL (imported lazily below)


def training_sections(path: Path) -> dict:
    """The base model, adapter and training sections of the config that trained the library."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {key: raw[key] for key in ("base_model", "adapter", "training")}


def config(work: Path, sections: dict, *, targets: list[str] | None, budget: int | None,
           previous: bool = False) -> dict:
    """The 4 Amazon domains with the library's training sections; the search section names only the
    targets, the budget and the seed (``targets`` None: the library's own config, for ``run_training``)."""
    name = f"defaults-{'_'.join(targets)}-{budget}" if targets else "defaults-library"
    search = {"seed": SEED}
    if targets:
        search.update(targets=list(targets), num_mixtures=budget)
        if previous:
            search.update(PREVIOUS_DEFAULTS)
    return {
        "name": name,
        **sections,
        "domains": {d: {"path": str(SHARED / "amazon_multidomain" / d)} for d in AMAZON},
        "search": search,
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }


def copy_library(source: Path, store: Path) -> None:
    """The 4 adapters and the shared initialisation, nothing else (no kept evaluations, no caches)."""
    store.mkdir(parents=True, exist_ok=True)
    for name in (*AMAZON, ".init"):
        if (source / name).is_dir() and not (store / name).exists():
            shutil.copytree(source / name, store / name)


def library(work: Path, source: Path, sections: dict) -> Path:
    """The 4 adapters copied from ``source`` into ``<work>/library/adapters``; ``run_training`` must skip all four."""
    from search.workflows.adapter_training import fingerprint, run_training
    from trainables.store import AdapterStore

    folder = work / "library"
    cfg = load(folder, config(folder, sections, targets=None, budget=None))
    held = AdapterStore(source)
    stale = {d: (held.meta(d).get("fingerprint"), fingerprint(cfg, d)) for d in AMAZON if d in held.domains()}
    stale = {d: pair for d, pair in stale.items() if pair[0] != pair[1]}
    missing = [d for d in AMAZON if d not in held.domains()]
    if stale or missing:
        raise SystemExit(f"the library {source} does not hold the 4 Amazon adapters under these settings "
                         f"(missing {missing}; fingerprint stored/expected {stale}): nothing would be reused")
    copy_library(source, Path(cfg.store_path))
    summary = run_training(cfg, progress=lambda line: None)
    if summary.failed or summary.trained or sorted(summary.skipped) != sorted(AMAZON):
        raise SystemExit(f"run_training was to skip the 4 library adapters, got {summary}")
    print(f"library: {len(summary.skipped)} adapters current, none trained ({summary.seconds:.1f} s)", flush=True)
    return Path(cfg.store_path)


def one_run(work: Path, store: Path, sections: dict, targets: list[str], budget: int, verbose: bool,
            previous: bool = False) -> dict:
    """One search with the defaults, its confirmation, then TIES of all on test; the row for results.jsonl."""
    from search.runtime.cluster import connect_ray
    from search.tracking.experiment_runs import open_existing_experiment
    from search.tracking.layout import spec_from_run
    from search.workflows.baselines import TIES_OF_ALL as PRODUCT_TIES
    from search.workflows.baselines import ties_of_all
    from search.workflows.confirmation_decision import CONFIDENCE
    from search.workflows.confirmation_passes import run_confirmation_trials
    from search.workflows.mixture_search import run_search
    from spaces.spec import make_mixture_spec
    from trainables.significance import mean_difference
    from trainables.store import load_sign_index

    assert PRODUCT_TIES == TIES_OF_ALL
    name = f"{'+'.join(targets)}-{budget}"
    run = work / "runs" / name
    if run.exists():
        shutil.rmtree(run)  # an unfinished run of a previous invocation
    copy_library(store, run / "adapters")
    cfg = load(run, config(run, sections, targets=targets, budget=budget, previous=previous))
    started = time.perf_counter()

    def say(line: str) -> None:
        if verbose:
            print(f"  [{time.perf_counter() - started:6.1f} s] {line}", flush=True)

    summary = run_search(cfg, progress=say)
    search_seconds = time.perf_counter() - started
    record = summary.confirmation
    if record is None:
        raise SystemExit(f"{name}: the search made no confirmation record (search.confirm is on by default)")
    client, experiment_id = open_existing_experiment(cfg)
    chosen_run = client.get_run(record["chosen_run_id"])
    chosen = spec_from_run(chosen_run)
    every = cfg.member_domains
    # The soup and TIES of all exactly as the confirmation builds them (candidates_for).
    specs = {"chosen": chosen, "soup": make_mixture_spec(members=every, targets=targets, require_targets=False),
             TIES_OF_ALL: ties_of_all(cfg, every, targets)}
    weights, _ = load_sign_index(cfg.store_path, every)
    connect_ray(cfg)
    t0 = time.perf_counter()
    correct = run_confirmation_trials(cfg, {n: (s, ["test"]) for n, s in specs.items()}, weights,
                                      name=f"{cfg.name}-bench-test", progress=say)
    extra_seconds = time.perf_counter() - t0
    test = {n: {t: correct[n]["test"][t] for t in targets} for n in specs}

    def mean_acc(rows: dict) -> float:
        return sum(sum(r) / len(r) for r in rows.values()) / len(rows)

    # The confirmation's own numbers, where it has them: the rows read back must give them exactly.
    assert abs(mean_acc(test["chosen"]) - record["test_accuracy_mean"]) < 1e-9, (name, record["test_accuracy_mean"])
    soup_record = record["baselines"]["soup"]["targets"]
    assert all(abs(sum(test["soup"][t]) / len(test["soup"][t]) - soup_record[t]["accuracy"]) < 1e-9 for t in targets)

    val_baselines = record["validation_baselines"]
    baselines = {}
    for b, label in (("soup", "soup of all"), (TIES_OF_ALL, TIES_OF_ALL)):
        d = mean_difference(test["chosen"], test[b], confidence=CONFIDENCE, seed=cfg.search.seed)
        baselines[b] = {"label": specs[b].label(), "validation": (val_baselines.get(label) or {}).get("accuracy_mean"),
                        "test": mean_acc(test[b]), "lead": d.lead, "low": d.low, "high": d.high, "n": d.n,
                        "worse": d.high < 0, "better": d.low > 0}

    searched = searched_mixtures(cfg, summary.parent_run_id, targets)
    return {"targets": targets, "budget": budget, "seed": SEED,
            "exported": record["chosen_label"], "exported_members": record["chosen_members"],
            "exported_k": record["chosen_k"], "exported_baseline": record.get("chosen_baseline"),
            "exported_validation": chosen_run.data.metrics["accuracy_mean"], "exported_test": mean_acc(test["chosen"]),
            "exported_per_target": record["targets"],
            "best_label": summary.best_label, "best_validation": summary.best_accuracy,
            "baselines": baselines, **searched,
            "evaluated": summary.evaluated, "filtered": summary.filtered, "gate": summary.fsd_gate_decision,
            "gate_label": summary.fsd_gate_label, "notes": record["notes"],
            "search_seconds": search_seconds, "search_only_seconds": summary.seconds,
            "ties_test_seconds": extra_seconds}


def _cell(b: dict) -> str:
    mark = " **worse**" if b["worse"] else " better" if b["better"] else ""
    val = "-" if b["validation"] is None else f"{b['validation']:.3f}"
    return f"{b['test']:.3f} ({val}) | {b['lead']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]{mark}"


def table(rows: list[dict]) -> str:
    lines = [(f"{len(rows)} runs, seed {SEED}, the product's defaults; accuracy on test (validation in brackets), "
             "mean over the targets; lead = exported - baseline on test, paired bootstrap 95% interval "
             "(stratified by target); near chance = evaluated searched mixtures of 2+ members whose mean "
             f"validation accuracy is at most chance + {CHANCE_MARGIN:.2f}"), ""]
    for budget in sorted({r["budget"] for r in rows}):
        sel = [r for r in rows if r["budget"] == budget]
        sel.sort(key=lambda r: (len(r["targets"]), RUNS.index("+".join(r["targets"]))
                                if "+".join(r["targets"]) in RUNS else 99))
        lines += [f"### num_mixtures {budget}", "",
                  ("| targets | exported (k) | exported test (val) | soup test (val) | lead over soup [95%] | "
                  "TIES of all test (val) | lead over TIES of all [95%] | near chance | gate | search wall (s) |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            exported = r["exported"] + (f" [{r['exported_baseline']}]" if r["exported_baseline"] else "")
            lines.append(f"| {'+'.join(r['targets'])} | {exported} ({r['exported_k']}) | "
                         f"{r['exported_test']:.3f} ({r['exported_validation']:.3f}) | {_cell(r['baselines']['soup'])} | "
                         f"{_cell(r['baselines'][TIES_OF_ALL])} | {r['near_chance']}/{r['multi']} | {r['gate']} | "
                         f"{r['search_seconds']:.0f} |")
        lines += ["", summary_line(sel, f"num_mixtures {budget}"), ""]
    lines.append(summary_line(rows, "all runs"))
    return "\n".join(lines)


def summary_line(rows: list[dict], what: str) -> str:
    n = len(rows)
    ties = sum(r["baselines"][TIES_OF_ALL]["worse"] for r in rows)
    soup = sum(r["baselines"]["soup"]["worse"] for r in rows)
    near, multi = sum(r["near_chance"] for r in rows), sum(r["multi"] for r in rows)
    return (f"{what}: exported significantly worse than TIES of all in {ties} of {n} runs, than the soup in {soup} "
            f"of {n}; multi-adapter mixtures within 5 points of chance: {near} of {multi}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "defaults-real"))
    # `make plan-real`'s store and config in this checkout; in a worktree, the main checkout's beside it
    plan = next((p for p in (ROOT / ".bench" / "plan-real", ROOT.parent / "main" / ".bench" / "plan-real")
                 if p.is_dir()), ROOT / ".bench" / "plan-real")
    parser.add_argument("--library", default=str(plan / "adapters"),
                        help="the store holding the 4 Amazon adapters (make plan-real's); copied, never written")
    parser.add_argument("--library-config", default=str(plan / "reviews12+tasks4.yaml"),
                        help="the config that trained them: its base_model, adapter and training sections are reused")
    parser.add_argument("--targets", nargs="+", default=list(RUNS), choices=RUNS,
                        help="which searches: one target, or two joined by +")
    parser.add_argument("--budgets", nargs="+", type=int, default=[4, 12], help="num_mixtures of each search")
    parser.add_argument("--verbose", action="store_true", help="print the product's progress lines")
    parser.add_argument("--table-only", action="store_true", help="print the tables of the results there, run nothing")
    parser.add_argument("--previous-defaults", action="store_true",
                        help="the search defaults before issue 33 (average first, weight FSD); give it its own --work")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = Path(args.work).resolve()
    results = work / "results.jsonl"
    started = time.perf_counter()
    if args.table_only:
        print(table([json.loads(line) for line in results.read_text().splitlines()]))
        return
    sections = training_sections(Path(args.library_config))
    store = library(work, Path(args.library), sections)
    done = {("+".join(r["targets"]), r["budget"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.exists() else set()
    # Budgets outermost: a run stopped early still has every target of the smaller budget.
    for budget in args.budgets:
        for name in args.targets:
            if (name, budget) in done:
                continue
            row = one_run(work, store, sections, name.split("+"), budget, args.verbose, args.previous_defaults)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            b = row["baselines"]
            print(f"{name} num_mixtures {budget}: exported {row['exported']} {row['exported_test']:.3f}, soup "
                  f"{b['soup']['test']:.3f} (lead {b['soup']['lead']:+.3f} [{b['soup']['low']:+.3f}, "
                  f"{b['soup']['high']:+.3f}]), TIES of all {b[TIES_OF_ALL]['test']:.3f} (lead "
                  f"{b[TIES_OF_ALL]['lead']:+.3f} [{b[TIES_OF_ALL]['low']:+.3f}, {b[TIES_OF_ALL]['high']:+.3f}]); "
                  f"near chance {row['near_chance']}/{row['multi']}; search {row['search_seconds']:.0f} s "
                  f"(elapsed {(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    wanted = {(n, b) for n in args.targets for b in args.budgets}
    rows = [r for r in map(json.loads, results.read_text().splitlines()) if ("+".join(r["targets"]), r["budget"]) in wanted]
    text = table(rows)
    (work / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
