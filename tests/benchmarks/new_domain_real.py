"""A new domain with a few labelled examples (issue 19): leave one domain out over the 12 real
review domains (4 Amazon + 8 FDU-MTL, binary sentiment, ``../shared/data``).

For each held-out domain, the other 11 domains' adapters are the library (MiniLM-L6 ``seq_bn``,
reduction 16, 2 epochs, 400 training examples, seed 0: issue 17's store, copied from
``--library`` into ``--work`` or trained there when missing). The held-out domain is data-only
(``train: false``) with ``max_train_examples`` = the budget, drawn with ``draw_seed`` = the seed;
its full validation split selects and its test split confirms (the library's training settings,
``max_eval_examples`` included, are issue 17's, so its fingerprints match and nothing is retrained).

Every run goes through the product: ``run_training`` (which skips the library and trains only
the "adapter trained on the few examples" baseline), then ``run_search`` (TPE over subsets of the
11 adapters, searched weights, the operators of ``--merge-methods``, refit heads fit on the few
examples; then the test-split confirmation with the new domain's baselines: base encoder + refit
head, the adapter trained on the few examples, the uniform soup of all 11 + refit head,
AdapterSoup's selection (k = 3 nearest by mean-pooled base embeddings) + refit head, the best
single adapter on validation + refit head).

Per budget it prints the mean test accuracy of the chosen mixture and of every baseline, how often
the chosen mixture beats each beyond its 95% paired interval, and the search's mean wall time.
Results are appended to ``<work>/results.jsonl`` as each run finishes (a rerun skips what is
there), the table written to ``<work>/table.md``.

Run: ``make new-domain-real`` (the full design: 6 held-out domains x 4 budgets x 3 seeds), under
``flock /tmp/signmix-measure.lock`` on a shared machine. ``--held-out``, ``--budgets``,
``--seeds`` and ``--num-mixtures`` make a smaller run; the table says what was run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
AMAZON = ("books", "dvd", "electronics", "kitchen")
FDU = ("baby", "camera_photo", "health_personal_care", "imdb", "magazines", "sports_outdoors", "toys_games",
       "video")
# Three Amazon and three FDU-MTL domains: both collections held out.
DEFAULT_HELD_OUT = ("books", "baby", "kitchen", "imdb", "dvd", "toys_games")
BASELINES = ("base", "fine_tuned", "soup_all", "adaptersoup", "best_single")
LABELS = {"base": "base + refit head", "fine_tuned": "adapter on the few examples",
          "soup_all": "soup of all 11 + refit", "adaptersoup": "AdapterSoup (k=3) + refit",
          "best_single": "best single + refit"}


def domains() -> dict[str, Path]:
    out = {d: SHARED / "amazon_multidomain" / d for d in AMAZON}
    out.update({d: SHARED / "fdu_mtl8" / d for d in FDU})
    return out


def config(work: Path, *, held_out: str | None, budget: int | None, seed: int | None, args) -> dict:
    """The library's training settings (issue 17's store: same fingerprints), the held-out domain
    data-only with ``budget`` examples drawn with ``seed``."""
    from search.cli.demo import demo_base_model

    entries = {d: {"path": str(p)} for d, p in domains().items()}
    search = {"strategy": "tpe", "num_mixtures": args.num_mixtures,
              # the operators and their parameters: the product's defaults unless given
              **{k: v for k, v in (("merge_methods", args.merge_methods), ("densities", args.densities),
                                   ("lambdas", args.lambdas)) if v},
              "prune_ratios": [0.0], "weights": "searched",
              "head": "refit", "max_concurrent": 2, "eval_batch_size": 64, "seed": 0, "max_fsd": None,
              "max_members": args.max_members, "adaptersoup_k": args.k, "confirm": True,
              "targets": [held_out or "books"]}
    if held_out is not None:
        # The fine-tuned baseline takes about as many optimizer steps as a library adapter (400
        # examples, 2 epochs, batch 16: 50 steps), not 2 epochs of a few examples (2 steps at 16);
        # at most 20 epochs (each validates on the full split): 20, 40, 52, 56 steps at 16..128.
        epochs = min(20, max(2, math.ceil(50 / math.ceil(budget / 16))))
        entries[held_out].update({"train": False, "max_train_examples": budget, "draw_seed": seed, "epochs": epochs})
    return {
        "name": f"new-domain-{held_out}-{budget}-{seed}" if held_out else "new-domain-library",
        "base_model": demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                     "max_train_examples": 400, "max_eval_examples": None},
        "domains": entries,
        "search": search,
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }


def load(work: Path, raw: dict):
    from search.settings.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    path = work / "signmix.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(path)


def library(work: Path, source: Path, args) -> Path:
    """The 12 adapters: copied from ``source`` when there, trained when missing (skipped when current)."""
    from search.workflows.adapter_training import run_training

    store = work / "library" / "adapters"
    if source.is_dir() and not store.exists():
        shutil.copytree(source, store)
    cfg = load(work / "library", config(work / "library", held_out=None, budget=None, seed=None, args=args))
    summary = run_training(cfg, progress=lambda line: None)
    if summary.failed:
        raise SystemExit(f"library training failed: {summary.failed}")
    print(f"library: {len(summary.skipped)} adapters current, {len(summary.trained)} trained "
          f"({summary.seconds:.0f} s)", flush=True)
    return store


CHANCE_MARGIN = 0.05  # "within 5 points of chance"


def searched_mixtures(cfg, parent_run_id: str, targets: list[str]) -> dict:
    """What a search evaluated, from its MLflow mixture runs (the one-body baselines the confirmation
    logged left out): every mixture's label, size, operator and mean validation accuracy, and how many
    of those with 2+ members scored within 5 points of chance (at most chance + 0.05; chance = the
    mean over the targets of 1 / number of labels)."""
    from search.tracking.experiment_runs import MixtureRun, open_existing_experiment
    from search.tracking.layout import BASELINE_TAG, KIND_TAG, PARENT_TAG, STATUS_TAG
    from trainables.store import AdapterStore

    client, experiment_id = open_existing_experiment(cfg)
    store = AdapterStore(cfg.store_path)
    chance = sum(1 / store.meta(t)["num_labels"] for t in targets) / len(targets)
    where = (f"tags.`{KIND_TAG}` = 'mixture' and tags.`{STATUS_TAG}` = 'evaluated' "
             f"and tags.`{PARENT_TAG}` = '{parent_run_id}'")
    mixtures = []
    for r in client.search_runs([experiment_id], filter_string=where, max_results=50000):
        m = MixtureRun.from_mlflow(r)
        if m.tags.get(BASELINE_TAG):
            continue
        mixtures.append({"label": r.info.run_name, "k": m.k, "merge_method": r.data.params.get("merge_method"),
                         "validation": m.metrics.get("accuracy_mean")})
    multi = [m for m in mixtures if m["k"] >= 2]
    near = [m for m in multi if m["validation"] is not None and m["validation"] <= chance + CHANCE_MARGIN]
    return {"mixtures": mixtures, "chance": chance, "multi": len(multi), "near_chance": len(near)}


def one_run(work: Path, store: Path, held_out: str, budget: int, seed: int, args) -> dict:
    """Train the few-shot baseline, search, confirm; returns the row for results.jsonl."""
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    run = work / "runs" / f"{held_out}-{budget}-{seed}"
    if run.exists():
        shutil.rmtree(run)  # an unfinished run of a previous invocation
    (run / "adapters").mkdir(parents=True)
    for d in domains():
        if d != held_out:  # the library, read through links: nothing of it is written
            os.symlink(store / d, run / "adapters" / d)
    cfg = load(run, config(run, held_out=held_out, budget=budget, seed=seed, args=args))
    started = time.perf_counter()
    training = run_training(cfg, progress=lambda line: None)
    if training.failed or training.trained != [held_out]:
        raise SystemExit(f"{held_out}: expected to train only the few-shot baseline, got {training}")
    trained = time.perf_counter()
    summary = run_search(cfg, progress=lambda line: None)
    searched = time.perf_counter()
    record = summary.confirmation
    comparison = record["new_domain"][held_out]
    return {"held_out": held_out, "budget": budget, "seed": seed, "num_mixtures": args.num_mixtures,
            "chosen": record["chosen_label"], "chosen_members": record["chosen_members"],
            "chosen_test": comparison["chosen"]["accuracy"], "chosen_low": comparison["chosen"]["ci_low"],
            "chosen_high": comparison["chosen"]["ci_high"], "test_n": comparison["chosen"]["n"],
            "best_validation": summary.best_accuracy, "baselines": comparison["baselines"],
            "train_seconds": trained - started, "search_seconds": searched - trained,
            "merge_methods": list(cfg.search.merge_methods), "densities": list(cfg.search.densities),
            "lambdas": list(cfg.search.lambdas),
            **searched_mixtures(cfg, summary.parent_run_id, [held_out])}


def table(rows: list[dict]) -> str:
    budgets = sorted({r["budget"] for r in rows})
    held = sorted({r["held_out"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    lines = [(f"{len(rows)} runs: held out {', '.join(held)}; seeds {seeds}; "
              f"{rows[0]['num_mixtures']} mixtures per search; test accuracy (mean over runs), and in brackets "
              "how many runs the chosen mixture beats the baseline beyond its 95% paired interval (and loses)"), "",
             "| budget | runs | chosen mixture | " + " | ".join(LABELS[b] for b in BASELINES)
             + " | search wall (s) | 2+ adapters near chance |",
             "|---|---|---|" + "---|" * len(BASELINES) + "---|---|"]
    for b in budgets:
        sel = [r for r in rows if r["budget"] == b]
        cells = [f"{statistics.mean(r['chosen_test'] for r in sel):.3f}"]
        for base in BASELINES:
            have = [r for r in sel if base in r["baselines"]]
            if not have:
                cells.append("-")
                continue
            acc = statistics.mean(r["baselines"][base]["accuracy"] for r in have)
            beaten = sum(r["baselines"][base]["beaten"] for r in have)
            lost = sum(r["baselines"][base]["lead_high"] < 0 for r in have)
            cells.append(f"{acc:.3f} (beats {beaten}/{len(have)}, loses {lost})")
        wall = statistics.mean(r["search_seconds"] for r in sel)
        counted = [r for r in sel if "multi" in r]  # runs before stop 37 kept no count
        near = (f"{sum(r['near_chance'] for r in counted)}/{sum(r['multi'] for r in counted)}" if counted else "-")
        lines.append(f"| {b} | {len(sel)} | " + " | ".join(cells) + f" | {wall:.0f} | {near} |")
    return "\n".join(lines)


def per_domain(rows: list[dict]) -> str:
    """One line per held-out domain and budget (mean over seeds): the chosen mixture, the answers
    from the few examples alone and the best single adapter, and the chosen mixture's paired lead
    over each with its 95% interval (of the first seed's run when there are several)."""
    lines = ["| held out | budget | runs | chosen | base + refit | fine-tuned on the few | best single + refit | "
             "lead over fine-tuned [95%] | lead over best single [95%] |", "|---|---|---|---|---|---|---|---|---|"]
    for held in sorted({r["held_out"] for r in rows}):
        for b in sorted({r["budget"] for r in rows if r["held_out"] == held}):
            sel = sorted((r for r in rows if r["held_out"] == held and r["budget"] == b), key=lambda r: r["seed"])

            def mean(key: str, sel=sel) -> str:
                have = [r["baselines"][key]["accuracy"] for r in sel if key in r["baselines"]]
                return f"{statistics.mean(have):.3f}" if have else "-"

            def lead(key: str, first=sel[0]) -> str:
                v = first["baselines"].get(key)
                if v is None:
                    return "-"
                return f"{first['chosen_test'] - v['accuracy']:+.3f} [{v['lead_low']:+.3f}, {v['lead_high']:+.3f}]"

            lines.append(f"| {held} | {b} | {len(sel)} | {statistics.mean(r['chosen_test'] for r in sel):.3f} | "
                         f"{mean('base')} | {mean('fine_tuned')} | {mean('best_single')} | {lead('fine_tuned')} | "
                         f"{lead('best_single')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "new-domain-real"))
    # `make plan-real`'s store in this checkout; in a worktree, the main checkout's beside it
    stores = [ROOT / ".bench" / "plan-real" / "adapters", ROOT.parent / "main" / ".bench" / "plan-real" / "adapters"]
    parser.add_argument("--library", default=str(next((p for p in stores if p.is_dir()), stores[0])),
                        help="a store of the 12 adapters to copy (issue 17's); trained when missing")
    parser.add_argument("--held-out", nargs="+", default=list(DEFAULT_HELD_OUT), choices=sorted(domains()))
    parser.add_argument("--budgets", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-mixtures", type=int, default=16, help="mixtures each search evaluates")
    parser.add_argument("--merge-methods", nargs="+", default=None,
                        help="the search's operators, the first walked by the greedy warm start (default: the "
                             "product's, TIES first; the runs of stop 35 and before: average ties task_arithmetic)")
    parser.add_argument("--densities", nargs="+", type=float, default=None,
                        help="TIES / DARE densities, the first walked by the greedy warm start (default: the product's)")
    parser.add_argument("--lambdas", nargs="+", type=float, default=None,
                        help="the operators' scales, the first walked by the greedy warm start (default: the product's)")
    parser.add_argument("--max-members", type=int, default=3, help="members of a searched mixture (AdapterSoup: 3)")
    parser.add_argument("--k", type=int, default=3, help="AdapterSoup's selection: the k nearest domains")
    parser.add_argument("--table-only", action="store_true", help="print the table of the results there, run nothing")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = Path(args.work).resolve()
    started = time.perf_counter()
    results = work / "results.jsonl"
    if args.table_only:
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        print(table(rows) + "\n\n" + per_domain(rows))
        return
    store = library(work, Path(args.library), args)
    done = {(r["held_out"], r["budget"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.exists() else set()
    # Seeds outermost, then domains: a run stopped early still covers every budget of the domains it reached.
    for seed in args.seeds:
        for held_out in args.held_out:
            for budget in args.budgets:
                if (held_out, budget, seed) in done:
                    continue
                row = one_run(work, store, held_out, budget, seed, args)
                with results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                beats = [b for b, v in row["baselines"].items() if v["beaten"]]
                print(f"{held_out} budget {budget} seed {seed}: chosen {row['chosen']} {row['chosen_test']:.3f}; "
                      + ", ".join(f"{b} {v['accuracy']:.3f}" for b, v in row["baselines"].items())
                      + f"; beats {beats or 'none'}; search {row['search_seconds']:.0f} s "
                      f"(elapsed {(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    wanted = {(h, b, s) for h in args.held_out for b in args.budgets for s in args.seeds}
    rows = [r for r in map(json.loads, results.read_text().splitlines())
            if (r["held_out"], r["budget"], r["seed"]) in wanted]
    text = table(rows) + "\n\n" + per_domain(rows)
    (work / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
