"""When does mixing pay? Issue 9's measurement on the 12 real review domains of ``../shared/data``.

Setup: the pretrained MiniLM-L6 encoder, one ``seq_bn`` adapter per domain (reduction 16,
400 training examples, 2 epochs, one shared initialisation), trained once and cached in
``--work``: the four Amazon domains (Blitzer et al. 2007) and the eight FDU-MTL domains.

What runs, every part through the product (``run_training``, ``run_search``: Ray Tune trials,
Optuna TPE, MLflow, the FSD gate, and the test-split confirmation with paired bootstrap
intervals and McNemar's test):

* **In-domain**, for the targets fixed before measuring (the first two domains of each
  collection: books, dvd, baby, camera_photo): one TPE search per head protocol (``own``,
  ``refit``) over every subset of up to ``--max-members`` of the 12 adapters that contains
  the target, every merge operator (average, task arithmetic, TIES, DARE linear/TIES) with
  its parameter choices, and searched weights. Each search confirms its chosen mixture once
  on the target's test split against the target's own adapter and the soup of all. The
  protocol whose chosen mixture is better on *validation* is the one reported as "best
  found"; both are printed.
* **Serving**: one adapter body for all 12 domains, and for the group of the 4 Amazon
  domains (every adapter of the group is a member; the search chooses the operator, its
  parameters and the head protocol). To fit the time budget, serving evaluates the first
  ``--serving-eval`` validation and test examples of each domain and refits heads on the
  first ``--serving-refit`` training examples (the adapters are the same).

Goal (issue 9): for at least half of the targets a mixture beats the target's own adapter on
test beyond the 95% interval (McNemar p < 0.05 with a positive lead); for the 12-domain
serving case the best found closes at least half of the gap between the soup of all and the
own-adapter bound. Run: ``make mixing-pays`` (about an hour on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
AMAZON = ("books", "dvd", "electronics", "kitchen")
FDU = ("baby", "camera_photo", "health_personal_care", "imdb", "magazines", "sports_outdoors", "toys_games",
       "video")
IN_DOMAIN_TARGETS = ("books", "dvd", "baby", "camera_photo")
OPERATORS = ["average", "task_arithmetic", "ties", "dare_linear", "dare_ties"]
REPORT_ONLY = False  # --report-only: print the tables of the searches finished so far, run nothing


def base_config(work: Path, *, max_train: int, name: str) -> dict:
    from search.cli.demo import demo_base_model

    domains = {d: {"path": str(SHARED / "amazon_multidomain" / d)} for d in AMAZON}
    domains.update({d: {"path": str(SHARED / "fdu_mtl8" / d)} for d in FDU})
    return {
        "name": name, "base_model": demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                     "max_train_examples": max_train},
        "domains": domains,
        "search": {"targets": [IN_DOMAIN_TARGETS[0]], "max_concurrent": 2, "eval_batch_size": 64},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }


def search_block(targets, *, head: str, num_mixtures: int, max_members: int | None, weights: str) -> dict:
    return {"strategy": "tpe", "targets": list(targets), "num_mixtures": num_mixtures, "head": head,
            "max_members": max_members, "merge_methods": OPERATORS, "densities": [0.2, 0.5, 0.8],
            "drop_rates": [0.3, 0.6, 0.9], "lambdas": [0.5, 1.0, 2.0], "weights": weights,
            "max_concurrent": 2, "eval_batch_size": 64, "seed": 0}


def load(work: Path, config: dict, stem: str):
    from search.settings.config import load_config

    path = work / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return load_config(path)


def search(work: Path, config: dict, stem: str) -> dict:
    """One product search; returns what the tables need (validation and the test confirmation).

    A finished search's row is kept in ``<work>/rows/<stem>.json`` and reused when the same
    search is asked again (same search settings), so an interrupted run continues where it stopped.
    """
    from search.workflows.mixture_search import run_search

    cached = work / "rows" / f"{stem}.json"
    if cached.is_file():
        row = json.loads(cached.read_text(encoding="utf-8"))
        if row.get("search") == config["search"]:
            print(f"  {stem}: reused ({row['best_label']}, validation {row['val_accuracy']:.4f})", flush=True)
            return row
    if REPORT_ONLY:
        print(f"  {stem}: not run yet", flush=True)
        return None
    cfg = load(work, {**config, "name": stem}, stem)  # one MLflow experiment per search
    started = time.perf_counter()
    s = run_search(cfg, progress=lambda line: None)
    c = s.confirmation or {}
    row = {"stem": stem, "head": config["search"]["head"], "best_label": s.best_label,
           "val_accuracy": s.best_accuracy, "chosen_label": c.get("chosen_label"), "k": c.get("chosen_k"),
           "fsd_gate": s.fsd_gate, "evaluated": s.evaluated, "filtered": s.filtered,
           "seconds": time.perf_counter() - started, "confirmation": c, "search": config["search"]}
    cached.parent.mkdir(exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=str), encoding="utf-8")
    tmp.replace(cached)
    print(f"  {stem}: best {s.best_label} val {s.best_accuracy:.4f}; {s.evaluated} evaluated, "
          f"{s.filtered} filtered; {row['seconds']:.0f}s", flush=True)
    return row


def per_target(row: dict, target: str) -> dict:
    c = row["confirmation"]
    own = c["baselines"]["own"]["targets"][target]
    soup = c["baselines"]["soup"]["targets"][target]
    t = c["targets"][target]
    alone = c["baselines"].get("alone", {}).get("targets", {}).get(target)
    p_alone = t.get("p_vs_alone")
    if alone is None and c.get("chosen_members") == [target]:
        alone, p_alone = t, 1.0  # the exported mixture is the target alone
    return {"own": own, "soup": soup, "best": t, "lead": t["accuracy"] - own["accuracy"], "p": t["p_vs_own"],
            "alone": alone, "p_alone": p_alone}


def fmt(iv: dict) -> str:
    return f"{iv['accuracy']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


def in_domain(work: Path, base: dict, args) -> list[dict]:
    rows = []
    for target in IN_DOMAIN_TARGETS:
        pair = []
        for head in ("own", "refit"):
            config = {**base, "search": search_block([target], head=head, num_mixtures=args.budget,
                                                     max_members=args.max_members, weights="searched")}
            pair.append(search(work, config, f"in-{target}-{head}"))
        pair = [r for r in pair if r is not None]
        if not pair:
            continue
        chosen = max(pair, key=lambda r: r["val_accuracy"])  # selection on validation only
        rows.append({"target": target, "runs": pair, "chosen": chosen["head"]})
    print("\nIn-domain, test split (95% paired bootstrap intervals; p: exact McNemar of the best found "
          "against the own adapter, and against the target alone with the same head protocol)")
    print(f"{'target':<14}{'own adapter':<24}{'soup of all':<24}{'head':<7}{'alone, same head':<24}"
          f"{'best found':<24}{'lead':>6}{'p own':>7}{'p alone':>8}  mixture")
    wins = mixing_wins = 0
    for r in rows:
        for run in r["runs"]:
            m = per_target(run, r["target"])
            mark = "*" if run["head"] == r["chosen"] else " "
            alone = fmt(m["alone"]) if m["alone"] else "-"
            p_alone = f"{m['p_alone']:.3f}" if m["p_alone"] is not None else "-"
            print(f"{r['target']:<14}{fmt(m['own']):<24}{fmt(m['soup']):<24}{run['head'] + mark:<7}{alone:<24}"
                  f"{fmt(m['best']):<24}{100 * m['lead']:>+6.1f}{m['p']:>7.3f}{p_alone:>8}  {run['chosen_label']}")
        m = per_target(next(x for x in r["runs"] if x["head"] == r["chosen"]), r["target"])
        wins += m["lead"] > 0 and m["p"] < 0.05
        mixing_wins += bool(m["alone"] and m["best"]["accuracy"] > m["alone"]["accuracy"]
                            and (m["p_alone"] or 1.0) < 0.05)
    print(f"(* the protocol chosen on validation) the best found beat the own adapter beyond the interval for "
          f"{wins} of {len(rows)} targets; it beat the target alone under the same head protocol (what mixing "
          f"adds) for {mixing_wins} of {len(rows)}")
    return rows


def serving(work: Path, base: dict, args, targets, stem: str) -> dict:
    capped = {**base, "training": {**base["training"], "max_eval_examples": args.serving_eval,
                                   "max_train_examples": args.serving_refit}}
    runs = []
    for head in ("own", "refit"):
        config = {**capped, "search": {**search_block(targets, head=head, num_mixtures=args.serving_budget,
                                                      max_members=None, weights="uniform"),
                                       "max_fsd": None}}
        runs.append(search(work, config, f"{stem}-{head}"))
    runs = [r for r in runs if r is not None]
    if not runs:
        return {}
    chosen = max(runs, key=lambda r: r["val_accuracy"])
    c = chosen["confirmation"]
    own = sum(c["baselines"]["own"]["targets"][t]["accuracy"] for t in targets) / len(targets)
    soup = sum(c["baselines"]["soup"]["targets"][t]["accuracy"] for t in targets) / len(targets)
    best = c["test_accuracy_mean"]
    gap = own - soup
    closed = (best - soup) / gap if gap > 0 else float("nan")
    print(f"\nServing {len(targets)} domains with one body ({stem}), mean test accuracy over the domains:")
    for run in runs:
        print(f"  head {run['head']}: {run['chosen_label']}  test {run['confirmation']['test_accuracy_mean']:.4f} "
              f"(validation {run['val_accuracy']:.4f})")
    print(f"  own adapters (bound) {own:.4f}; soup of all {soup:.4f}; best found ({chosen['head']} heads, "
          f"chosen on validation) {best:.4f}: closes {closed:.0%} of the gap")
    return {"stem": stem, "runs": runs, "own": own, "soup": soup, "best": best, "closed": closed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "mixing-pays"))
    parser.add_argument("--max-train", type=int, default=400, help="training examples per domain")
    parser.add_argument("--budget", type=int, default=10, help="mixtures per in-domain search")
    parser.add_argument("--max-members", type=int, default=4)
    parser.add_argument("--serving-budget", type=int, default=4, help="mixtures per serving search")
    parser.add_argument("--serving-eval", type=int, default=100)
    parser.add_argument("--serving-refit", type=int, default=200)
    parser.add_argument("--parts", default="in-domain,serving-4,serving-12")
    parser.add_argument("--report-only", action="store_true", help="print the finished searches' tables only")
    args = parser.parse_args(argv)
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    from search.workflows.adapter_training import run_training

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = base_config(work, max_train=args.max_train, name=f"mixing-pays-{args.max_train}")
    started = time.perf_counter()
    if not REPORT_ONLY:
        summary = run_training(load(work, base, "train"), progress=lambda line: None)
        print(f"adapters: {len(summary.trained)} trained, {len(summary.skipped)} reused ({summary.seconds:.0f}s)",
              flush=True)
    results: dict = {"args": vars(args)}
    parts = args.parts.split(",")
    if "in-domain" in parts:
        results["in_domain"] = in_domain(work, base, args)
    if "serving-4" in parts:
        results["serving_4"] = serving(work, base, args, list(AMAZON), "serve-amazon4")
    if "serving-12" in parts:
        results["serving_12"] = serving(work, base, args, list(AMAZON + FDU), "serve-all12")
    if REPORT_ONLY:
        return 0
    (work / f"results-{args.max_train}.json").write_text(json.dumps(results, indent=1, default=str),
                                                        encoding="utf-8")
    print(f"\ntook {time.perf_counter() - started:.0f}s; results in {work}/results-{args.max_train}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
