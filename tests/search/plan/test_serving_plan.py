"""A serving plan end to end on real parts: tiny BERT adapters of the demo's five domains, a real
local Ray cluster, real Optuna, a real MLflow SQLite store; then its bundle, loaded with plain
``adapters`` calls and evaluated again."""

from __future__ import annotations

import itertools

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plan_config_path(tmp_path_factory, shared_store, tiny_bert, demo_domains):
    folder = tmp_path_factory.mktemp("plan")
    return str(write_config(
        folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"], store=shared_store,
        search={"strategy": "tpe", "merge_methods": ["ties", "average"], "densities": [0.5], "lambdas": [1.0],
                "prune_ratios": [0.0], "warm_start": "greedy_fsd"},
        plan={"group_evaluations": 5, "mixtures_per_group": 2, "tolerance": 0.01}))


@pytest.fixture(scope="module")
def plan_cfg(plan_config_path):
    from search.settings.config import load_config

    return load_config(plan_config_path)


@pytest.fixture(scope="module")
def planned(plan_cfg):
    from search.plan.serving_plan import run_plan

    return run_plan(plan_cfg)


def test_the_plan_has_one_best_plan_per_number_of_bodies_and_the_bound_at_n(planned, plan_cfg):
    rec = planned.record
    domains = sorted(plan_cfg.domains)
    bodies = [r["bodies"] for r in rec["front"]]
    assert bodies == sorted(bodies) and bodies[0] == 1 and bodies[-1] == len(domains)
    for r in rec["front"]:
        assert sorted(d for g in r["groups"] for d in g) == domains
        assert r["test_low"] <= r["test"] <= r["test_high"]
    at_n = rec["front"][-1]
    bound = rec["references"]["own adapters, trained heads (bound)"]
    assert at_n["validation"] == pytest.approx(bound["validation"]) and at_n["test"] == pytest.approx(bound["test"])
    assert "own adapters, refit heads (bound)" in rec["references"] and "TIES of all" in rec["references"]
    assert 4 <= rec["group_evaluations"] <= 5  # the agglomerative start alone needs N - 1 = 4
    # the start's distances (plan.compatibility: activation_fsd, one probe pass per adapter): every pair
    assert sorted(rec["distances"]) == [f"{a},{b}" for a, b in itertools.combinations(domains, 2)]
    assert all(0.0 <= v <= 1.0 for v in rec["distances"].values())
    # chosen: the fewest bodies within the tolerance of the bound on validation
    within = [r["bodies"] for r in rec["front"] if r["validation"] >= bound["validation"] - 0.01 - 1e-12]
    assert rec["chosen"]["bodies"] == min(within)


def test_each_group_body_is_a_search_recorded_in_mlflow_and_the_plan_run_holds_table_figure_and_record(
        planned, plan_cfg):
    from mlflow import MlflowClient

    from search.tracking.layout import PLAN_RUN_TAG

    rec = planned.record
    searches = mlflow_runs(plan_cfg, f"tags.`{PLAN_RUN_TAG}` = '{planned.run_id}'")
    assert len(searches) == rec["group_evaluations"] == len(rec["group_runs"])
    for group, body in rec["group_runs"].items():
        children = mlflow_runs(plan_cfg, f"tags.`mlflow.parentRunId` = '{body['search_run_id']}' and "
                                         "tags.`signmix.status` = 'evaluated'")
        assert 1 <= len(children) <= 2 and body["run_id"] in {c.info.run_id for c in children}
        assert all(c.data.params["members"] == group.replace("+", ",") for c in children)
    client = MlflowClient(plan_cfg.tracking_uri)
    files = {f.path for f in client.list_artifacts(planned.run_id, "plan")}
    assert files == {"plan/plan.json", "plan/plan_front.csv", "plan/plan_front.png"}
    run = client.get_run(planned.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["signmix.kind"] == "plan"
    assert run.data.metrics["chosen_bodies"] == rec["chosen"]["bodies"]


def test_a_second_plan_reuses_every_group_body_searched_with_the_same_settings(planned, plan_cfg):
    from search.plan.serving_plan import run_plan
    from search.tracking.layout import PLAN_GROUP_TAG

    searches_before = len(mlflow_runs(plan_cfg, f"tags.`{PLAN_GROUP_TAG}` != ''"))
    again = run_plan(plan_cfg).record
    assert again["group_searches_reused"] == again["group_evaluations"] == planned.record["group_evaluations"]
    assert len(mlflow_runs(plan_cfg, f"tags.`{PLAN_GROUP_TAG}` != ''")) == searches_before  # nothing searched again
    assert [r["groups"] for r in again["front"]] == [r["groups"] for r in planned.record["front"]]
    assert {g: b["run_id"] for g, b in again["group_runs"].items()} == {
        g: b["run_id"] for g, b in planned.record["group_runs"].items()}


def signmix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli.main", *args], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def bundle(planned, plan_config_path, tmp_path_factory) -> Path:
    """The front's plan of 4 bodies (one merged pair, three own adapters: both kinds of body) of
    the module's plan run (named: a later test plans again)."""
    out = tmp_path_factory.mktemp("bundle-parent") / "bundle"
    done = signmix("export", plan_config_path, "--plan", "--run-id", planned.run_id, "--bodies", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered as test-exp version" in done.stdout
    return out


def test_the_bundle_holds_every_body_every_head_and_the_routing(bundle, planned):
    front = next(r for r in planned.record["front"] if r["bodies"] == 4)
    routing = json.loads((bundle / "routing.json").read_text())["domains"]
    assert sorted(routing) == planned.record["domains"]
    bodies = sorted(p.name for p in (bundle / "bodies").iterdir())
    assert bodies == sorted("+".join(g) for g in front["groups"]) and len({r["body"] for r in routing.values()}) == 4
    for d, route in routing.items():
        assert (bundle / route["body"] / "adapter.safetensors").is_file()
        assert (bundle / route["head"] / "model_head.safetensors").is_file()
        assert d in route["body"].split("/")[-1].split("+")
    plan = json.loads((bundle / "plan.json").read_text())
    assert plan["chosen"] == planned.record["chosen"] and plan["served"]["bodies"] == 4
    assert plan["served"]["test_by_domain"] == front["test_by_domain"] and plan["registered_model"]["version"] >= 1
    assert [g["kind"] for g in plan["served"]["groups"]].count("merged") == 1
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_the_bundle_is_one_registered_model_version_of_the_plan_run(bundle, planned, plan_cfg):
    from mlflow import MlflowClient

    plan = json.loads((bundle / "plan.json").read_text())
    version = MlflowClient(plan_cfg.tracking_uri).get_model_version(plan["registered_model"]["name"],
                                                                    str(plan["registered_model"]["version"]))
    assert version.run_id == planned.run_id and version.source.endswith("/bundle")


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluating_the_bundle_reproduces_every_domains_logged_accuracy(bundle, split):
    done = signmix("evaluate", str(bundle), "--split", split)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"reproduces every domain's logged {split} accuracy" in done.stdout


def test_the_readme_snippet_loads_the_bundle_with_plain_adapters_calls(bundle, planned):
    """The README's loading example, run as it is written there (paths replaced)."""
    import re

    import torch

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    snippet = re.search(r"```python\n(# a serving bundle.*?)```", readme, flags=re.S).group(1)
    scope: dict = {}
    exec(snippet.replace('"bundle/', f'"{bundle}/'), scope)
    routing = scope["routing"]["domains"]
    for domain in planned.record["domains"]:
        model = scope["use"](domain)
        with torch.no_grad():
            logits = model(**scope["tokenizer"](["It is excellent."], return_tensors="pt")).logits
        head = json.loads((bundle / routing[domain]["head"] / "head_config.json").read_text())
        assert logits.shape[-1] == head["config"]["num_labels"]
