"""Serving plans on real data (issue 17): how many merged bodies do 12 and 16 real domains need?

Two collections from ``../shared/data``: the 12 review domains (4 Amazon + 8 FDU-MTL, binary
sentiment) and those plus the 4 sentence tasks (CR, MPQA, SUBJ, TREC: their own label sets).
Setup: the pretrained MiniLM-L6 encoder, one ``seq_bn`` adapter per domain (reduction 16,
2 epochs, one shared initialisation), trained once into ``--work`` (skipped when there).

Every part runs through the product: ``run_training``, then ``run_plan`` (the bound under both
head protocols, the soup and TIES of all and cross heads in one Ray trial; each group's body a
TPE search of TIES / task arithmetic with λ 1 or 2; the front confirmed on test with 95%
intervals). Per collection it prints, for every number of bodies G, the mean validation and
test accuracy (interval) of the best plan found, against the bound under both head protocols,
the soup and TIES of all; the group evaluations used and the wall time.

Goals (issue 17): on the 12 review domains one body within 1 point of the bound under the same
head protocol on test; on the 16, at most 3 bodies within 1 point; the plan in at most 4N group
evaluations; a 16-domain plan under 90 minutes on 2 cores at the default validation size.

Run: ``make plan-real`` (under ``flock /tmp/signmix-measure.lock`` on a shared machine).
``--max-train`` and ``--max-eval`` make a smaller run (fewer training and evaluation examples); the
table says which was used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
AMAZON = ("books", "dvd", "electronics", "kitchen")
FDU = ("baby", "camera_photo", "health_personal_care", "imdb", "magazines", "sports_outdoors", "toys_games",
       "video")
SENTENCE = ("cr", "mpqa", "subj", "trec")


def config(work: Path, domains: dict, *, name: str, args) -> dict:
    from search.cli.demo import demo_base_model

    return {
        "name": name, "base_model": demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                     "max_train_examples": args.max_train, "max_eval_examples": args.max_eval},
        "domains": {d: {"path": str(p)} for d, p in domains.items()},
        "search": {"strategy": "tpe", "targets": [next(iter(domains))], "merge_methods": ["ties", "task_arithmetic"],
                   "densities": [0.1, 0.2], "lambdas": [1.0, 1.5, 2.0], "prune_ratios": [0.0], "head": args.head,
                   "max_concurrent": 2, "eval_batch_size": 64, "seed": 0, "max_fsd": None},
        "plan": {"mixtures_per_group": args.per_group, "group_evaluations": args.group_evaluations,
                 "compatibility": args.compatibility, "transfer": not args.no_transfer},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }


def collections() -> dict[str, dict[str, Path]]:
    reviews = {d: SHARED / "amazon_multidomain" / d for d in AMAZON}
    reviews.update({d: SHARED / "fdu_mtl8" / d for d in FDU})
    everything = {**reviews, **{d: SHARED / "sentence_tasks" / d for d in SENTENCE}}
    return {"reviews12": reviews, "reviews12+tasks4": everything}


def report(name: str, rec: dict, seconds: float) -> list[str]:
    lines = [f"## {name}: {len(rec['domains'])} domains, {rec['group_evaluations']} group evaluations "
             f"(budget {rec['group_evaluations_budget']}), {seconds / 60:.1f} min", "",
             "| bodies | groups | validation | test [95% interval] |", "|---|---|---|---|"]
    for r in rec["front"]:
        groups = " \\| ".join("+".join(g) for g in r["groups"]) if r["bodies"] <= 4 else f"{r['bodies']} groups"
        mark = " (chosen)" if r["chosen"] else ""
        lines.append(f"| {r['bodies']}{mark} | {groups} | {r['validation']:.3f} | {r['test']:.3f} "
                     f"[{r['test_low']:.3f}, {r['test_high']:.3f}] |")
    for label, ref in rec["references"].items():
        lines.append(f"| {label} | | {ref['validation']:.3f} | {ref['test']:.3f} "
                     f"[{ref['test_low']:.3f}, {ref['test_high']:.3f}] |")
    lines += ["", f"chosen: {rec['why']}", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "plan-real"))
    parser.add_argument("--only", choices=list(collections()), help="one collection")
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--max-eval", type=int, default=None, help="validation and test examples per domain")
    parser.add_argument("--per-group", type=int, default=4, help="evaluations of one group's body")
    parser.add_argument("--group-evaluations", type=int, default=None, help="default 4N")
    parser.add_argument("--head", choices=["own", "refit"], default="own")
    parser.add_argument("--compatibility", choices=["activation_fsd", "cross_heads", "fsd"], default="activation_fsd",
                        help="where the plan starts (plan.compatibility; the default is the product's)")
    parser.add_argument("--no-transfer", action="store_true", help="plan.transfer: false (every group's search afresh)")
    args = parser.parse_args()

    from search.settings.config import load_config
    from search.plan.serving_plan import run_plan
    from search.workflows.adapter_training import run_training

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = [f"# Serving plans on real data (max_train {args.max_train}, max_eval {args.max_eval}, "
           f"{args.per_group} evaluations per group, head {args.head}, compatibility {args.compatibility})", ""]
    for name, domains in collections().items():
        if args.only and name != args.only:
            continue
        path = work / f"{name}.yaml"
        raw = config(work, domains, name=f"plan-real-{name}".replace("+", "-"), args=args)  # names take no '+'
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        cfg = load_config(path)
        started = time.perf_counter()
        trained = run_training(cfg, progress=lambda line: print(f"  {line}", flush=True))
        print(f"{name}: trained {len(trained.trained)}, skipped {len(trained.skipped)} in {trained.seconds:.0f}s",
              flush=True)
        planned = time.perf_counter()
        outcome = run_plan(cfg, progress=lambda line: print(f"  [{(time.perf_counter() - planned) / 60:5.1f} min] {line}",
                                                            flush=True))
        lines = report(name, outcome.record, time.perf_counter() - planned)
        (work / f"{name}.json").write_text(json.dumps(outcome.record, default=str), encoding="utf-8")
        print("\n".join(lines), flush=True)
        out += lines
        print(f"{name}: {time.perf_counter() - started:.0f}s in all", flush=True)
    (work / "plan_real.md").write_text("\n".join(out), encoding="utf-8")
    print(f"written: {work / 'plan_real.md'}")


if __name__ == "__main__":
    main()
