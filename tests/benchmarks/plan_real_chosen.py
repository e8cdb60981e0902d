"""The plan's G = 1 body for the 12 review domains against the 12 own adapters, on test.

Reads the one body that ``plan_real.py --only reviews12`` searched for all 12 domains from its MLflow
store (``.bench/plan-real``) and scores it and each own adapter (trained heads) on every test split,
through the product's parallel confirmation trials; prints mean test accuracy with a 95% interval
stratified by domain, and per domain. Run after ``make plan-real`` (or its ``--only reviews12`` part):
``python tests/benchmarks/plan_real_chosen.py`` (about 2 minutes on 2 cores).
"""
import json
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from search.settings.config import load_config
from search.workflows.export import find_best_run
from search.plan.bodies import accuracy, correctness, own_spec
from search.plan.front import mean_accuracy_interval
from search.tracking.layout import PLAN_GROUP_TAG, spec_from_run
from trainables.store import load_sign_index


def main() -> None:
    t0 = time.time()
    cfg = load_config(Path(__file__).resolve().parents[2] / ".bench" / "plan-real" / "reviews12.yaml")
    domains = sorted(cfg.domains)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PLAN_GROUP_TAG}` = '{','.join(domains)}'")
    print("group searches of all 12:", len(runs))
    best = find_best_run(client, exp.experiment_id, runs[0].info.run_id)
    spec = spec_from_run(best)
    print("G=1 body:", spec.label(), "validation", best.data.metrics.get("accuracy_mean"))
    weights, _ = load_sign_index(cfg.store_path, cfg.member_domains)
    cands = {"body": (spec, ["test"])}
    cands.update({f"own/{d}": (own_spec(d, "own"), ["test"]) for d in domains})
    res = correctness(cfg, cands, weights, name="g1-test-check", progress=print)
    body = {d: res["body"]["test"][d] for d in domains}
    own = {d: res[f"own/{d}"]["test"][d] for d in domains}
    for name, c in (("one body (G=1)", body), ("12 own adapters (bound)", own)):
        iv = mean_accuracy_interval(c, seed=0)
        print(f"{name}: test {iv.accuracy:.3f} [{iv.low:.3f}, {iv.high:.3f}]")
    print(json.dumps({d: [round(accuracy(body[d]), 3), round(accuracy(own[d]), 3)] for d in domains}))
    print(f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
