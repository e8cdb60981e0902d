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

from tests_support import mlflow_runs, run_signmix, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plan_config_path(tmp_path_factory, shared_store, tiny_bert, demo_domains):
    folder = tmp_path_factory.mktemp("plan")
    return str(write_config(
        folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"], store=shared_store,
        search={"strategy": "tpe", "merge_methods": ["ties", "average"], "densities": [0.5], "lambdas": [1.0],
                "prune_ratios": [0.0], "warm_start": "greedy_fsd"},
        # two group searches at once (Ray tasks on the session's cluster); the other plan tests search one at a time
        plan={"group_evaluations": 5, "mixtures_per_group": 2, "tolerance": 0.01, "parallel_groups": 2}))


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
    # plan.parallel_groups: 2: the start's group searches ran two at a time, side by side
    spans = sorted((r.info.start_time, r.info.end_time) for r in searches)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert all(r.info.status == "FINISHED" for r in searches)
    client = MlflowClient(plan_cfg.tracking_uri)
    files = {f.path for f in client.list_artifacts(planned.run_id, "plan")}
    assert files == {"plan/plan.json", "plan/plan_front.csv", "plan/plan_front.png"}
    run = client.get_run(planned.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["signmix.kind"] == "plan"
    assert run.data.metrics["chosen_bodies"] == rec["chosen"]["bodies"]


def test_the_plan_is_one_tree_whose_run_says_which_domains_share_which_body(planned, plan_cfg):
    """MLflow's runs table nests the group searches under the plan run, named for their domains; the plan
    run's page shows the bodies, the test accuracy and the worst domain without opening an artifact;
    the experiment opens on its runs."""
    from mlflow import MlflowClient

    from search.tracking.layout import PLAN_RUN_TAG

    rec, client = planned.record, MlflowClient(plan_cfg.tracking_uri)
    searches = mlflow_runs(plan_cfg, f"tags.`{PLAN_RUN_TAG}` = '{planned.run_id}'")
    assert {s.data.tags["mlflow.parentRunId"] for s in searches} == {planned.run_id}
    assert sorted(s.info.run_name for s in searches) == sorted(f"plan-group {g}" for g in rec["group_runs"])
    for s in searches:  # their mixtures under them
        children = mlflow_runs(plan_cfg, f"tags.`mlflow.parentRunId` = '{s.info.run_id}'")
        assert children and all(c.data.tags["signmix.kind"] == "mixture" for c in children)
    run = client.get_run(planned.run_id)
    chosen = rec["chosen"]
    bodies = {k: v for k, v in run.data.tags.items() if k.startswith("signmix.body_")}
    assert bodies == {f"signmix.body_{i}": f"{'+'.join(g['domains'])} ({g['kind']})"
                      for i, g in enumerate(chosen["groups"], 1)}
    note = run.data.tags["mlflow.note.content"]
    assert f"**{chosen['bodies']} bodies**" in note and f"{chosen['test']:.4f}" in note
    for g in chosen["groups"]:
        assert f"| {', '.join(g['domains'])} |" in note
    worst = chosen["worst_domain"]
    own = rec["references"]["own adapters, trained heads (bound)"]["test_by_domain"]
    assert worst["loss"] == max(own[d] - chosen["test_by_domain"][d] for d in rec["domains"])
    assert run.data.tags["signmix.worst_domain"] == worst["domain"] and worst["domain"] in note
    assert run.data.metrics["worst_domain_test_loss"] == pytest.approx(worst["loss"], abs=1e-9)
    assert run.data.metrics["chosen_test_ci_low"] <= run.data.metrics["chosen_test_accuracy"]
    experiment = client.get_experiment_by_name(plan_cfg.experiment_name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert plan_cfg.name in experiment.tags["mlflow.note.content"] and "books" in experiment.tags["mlflow.note.content"]


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
    # its baselines and its front's test rows are read back from the store, not scored again, and it says so
    assert planned.record["time_by_part"]["baselines"]["rows"] > 0
    assert again["time_by_part"]["baselines"]["rows"] == again["time_by_part"]["the front on test"]["rows"] == 0


def signmix(*args: str) -> subprocess.CompletedProcess:
    """The command in a process of its own, forked from one that imported its libraries once."""
    return run_signmix(*args, timeout=900)


@pytest.fixture(scope="module")
def bundle(planned, plan_config_path, tmp_path_factory) -> Path:
    """The front's plan of 4 bodies (one merged pair, three own adapters: both kinds of body) of
    the module's plan run (named: a later test plans again)."""
    out = tmp_path_factory.mktemp("bundle-parent") / "bundle"
    done = signmix("export", plan_config_path, "--plan", "--run-id", planned.run_id, "--bodies", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered as test-exp-bundle version" in done.stdout and "models:/test-exp-bundle@serving" in done.stdout
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


def test_the_bundle_is_one_described_registered_pyfunc_model_version_of_the_plan_run(bundle, planned, plan_cfg,
                                                                                    monkeypatch):
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    plan = json.loads((bundle / "plan.json").read_text())
    reg = plan["registered_model"]
    client = MlflowClient(plan_cfg.tracking_uri)
    assert reg["name"] == "test-exp-bundle" and reg["alias"] == "serving"  # apart from single mixtures
    version = client.get_model_version(reg["name"], str(reg["version"]))
    assert version.run_id == planned.run_id and version.source == f"models:/{reg['model_id']}"
    assert client.get_model_version_by_alias(reg["name"], "serving").version == version.version
    assert version.tags["signmix.kind"] == "bundle" and all(v != "" for v in version.tags.values())
    served = plan["served"]
    assert f"{served['test']:.4f} [{served['test_low']:.4f}, {served['test_high']:.4f}]" in version.description
    assert all(", ".join(g["domains"]) in version.description for g in served["groups"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", plan_cfg.tracking_uri)  # models:/ URIs resolve through it
    info = get_model_info(f"models:/{reg['name']}/{reg['version']}")
    assert "python_function" in info.flavors
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["domain", "text", "text_pair"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["label", "probabilities", "error"]


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


def split_rows(bundle: Path, domain: str, split: str) -> tuple[list[str], list[str]]:
    """The texts and gold label names of ``domain``'s ``split``, the rows `signmix evaluate` scores."""
    from trainables.data import load_domain
    from trainables.settings import DomainConfig

    routing = json.loads((bundle / "routing.json").read_text())["domains"]
    record = json.loads((bundle / routing[domain]["body"] / "mixture.json").read_text())
    ev, names = record["evaluation"], record["label_names"][domain]
    rows = load_domain(domain, DomainConfig.model_validate(record["domains"][domain]), splits=(split,),
                       max_eval_examples=ev["max_eval_examples"], seed=ev["seed"], label_names=names).splits[split]
    return list(rows["text"]), [names[int(label)] for label in rows["label"]]


@pytest.fixture(scope="module")
def evaluated(bundle) -> dict:
    """The bundle's own evaluation on validation: what `signmix evaluate` scores, row by row."""
    from search.plan.bundle import evaluate_bundle

    return evaluate_bundle(bundle, "validation")


def expected_labels(bundle: Path, evaluated: dict, domain: str) -> list[str]:
    route = evaluated["routing"]["domains"][domain]
    names = json.loads((bundle / route["body"] / "mixture.json").read_text())["label_names"][domain]
    return [names[c] for c in evaluated["predictions"][domain]]


def served_env(plan_cfg) -> dict:
    """A subprocess's environment: the test's store, this checkout importable, the venv's tools (uvicorn) found."""
    import os

    return {**os.environ, "MLFLOW_TRACKING_URI": plan_cfg.tracking_uri,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")])}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_serves_the_registered_bundle_as_evaluated_and_names_an_unknown_domain(
        bundle, evaluated, plan_cfg):
    """`mlflow models serve` on the registry's version: a mixed request (two domains' validation splits
    and a row of a domain the bundle does not serve) gets exactly the evaluation's predictions, and the
    unknown row a clear error; the server keeps serving."""
    import os
    import signal
    import time

    import requests

    reg = json.loads((bundle / "plan.json").read_text())["registered_model"]
    port = free_port()
    env = served_env(plan_cfg)
    log = open(Path(bundle).parent / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               f"models:/{reg['name']}/{reg['version']}", "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow models serve did not start:\n" +
                                     (Path(bundle).parent / "serve.log").read_text()[-3000:])
            time.sleep(1)
        books, _ = split_rows(bundle, "books", "validation")
        support, _ = split_rows(bundle, "support", "validation")
        rows = [["books", t] for t in books] + [["weather", "Sunny with a chance of rain."]] + \
            [["support", t] for t in support]
        reply = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["domain", "text"],
                                                                             "data": rows}}, timeout=300)
        assert reply.status_code == 200, reply.text[:2000]
        predictions = reply.json()["predictions"]
        assert len(predictions) == len(rows)
        unknown = predictions[len(books)]
        assert unknown["label"] is None and "unknown domain 'weather'" in unknown["error"]
        assert "books" in unknown["error"] and "support" in unknown["error"]
        known = predictions[:len(books)] + predictions[len(books) + 1:]
        assert [p["label"] for p in known] == (expected_labels(bundle, evaluated, "books")
                                               + expected_labels(bundle, evaluated, "support"))
        assert all(p["error"] is None and sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-4)
                   and max(p["probabilities"], key=p["probabilities"].get) == p["label"] for p in known)
        # a request without the text column: refused whole, saying what is missing; the server goes on
        bad = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["domain"],
                                                                           "data": [["books"]]}}, timeout=60)
        assert bad.status_code == 400 and "text" in bad.text
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def test_the_registered_bundle_loads_with_pyfunc_in_a_fresh_process_and_reproduces_its_evaluation(
        bundle, evaluated, plan_cfg):

    reg = json.loads((bundle / "plan.json").read_text())["registered_model"]
    domains = sorted(evaluated["routing"]["domains"])
    rows = {d: split_rows(bundle, d, "validation") for d in domains}
    request = [[d, t] for d in domains for t in rows[d][0]]
    script = (
        "import json, sys\n"
        "import mlflow.pyfunc, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('models:/{reg['name']}@serving')\n"
        "rows = json.load(sys.stdin)\n"
        "out = model.predict(pd.DataFrame(rows, columns=['domain', 'text']))\n"
        "print(json.dumps(list(out['label'])))\n")
    env = served_env(plan_cfg)
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(request), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    labels = json.loads(done.stdout.strip().splitlines()[-1])
    start = 0
    for d in domains:
        texts, gold = rows[d]
        mine = labels[start:start + len(texts)]
        start += len(texts)
        assert mine == expected_labels(bundle, evaluated, d)
        accuracy = sum(a == b for a, b in zip(mine, gold)) / len(gold)
        assert accuracy == evaluated["metrics"][f"accuracy/{d}"]  # exactly what `signmix evaluate` scores

def test_every_plan_of_the_front_names_its_worst_domain_and_each_domain_against_its_own_adapter_on_test(planned):
    from search.plan.serving_plan import plan_lines

    rec = planned.record
    own = rec["front"][-1]["validation_by_domain"]  # G = N: every domain its own adapter
    text = "\n".join(plan_lines(planned))
    for r in rec["front"]:
        losses = {d: own[d] - a for d, a in r["validation_by_domain"].items()}
        assert r["worst_loss"] == pytest.approx(max(losses.values())) and losses[r["worst_domain"]] == r["worst_loss"]
        assert f"{r['worst_domain']} {-100 * r['worst_loss']:+.1f}" in text
        assert sorted(r["test_vs_own"]) == rec["domains"]
        assert all(v["low"] <= v["lead"] <= v["high"] for v in r["test_vs_own"].values())
        assert r["test_significantly_worse"] == [d for d in rec["domains"] if r["test_vs_own"][d]["high"] < 0]
        assert r["bytes"] >= r["bodies"] * rec["adapter_bytes"] and len(r["serving"]) == r["bodies"]
    assert rec["front"][-1]["worst_loss"] == 0.0 and "worst domain on validation:" in text
    # every merged group of the front was served in every option and picked one
    assert rec["serving_options"] == ["plain", "rescaled", "emr", "tall"]
    for group, serving in rec["serving"].items():
        assert set(serving["options"]) == set(rec["serving_options"]) and serving["option"] in serving["options"]


def test_the_plan_says_where_its_time_went_part_by_part(planned):
    from search.plan.serving_plan import plan_lines

    rec = planned.record
    parts = rec["time_by_part"]
    assert list(parts) == ["baselines", "distances (activation_fsd)", "group searches", "serving options",
                           "the front on test"]
    # the front on test may have nothing left to score (every group of the front served by an option)
    assert all(p["seconds"] >= 0 for p in parts.values()) and sum(p["seconds"] for p in parts.values()) < planned.seconds
    assert parts["baselines"]["seconds"] > 0 and parts["group searches"]["seconds"] > 0
    assert parts["baselines"]["rows"] > 0 and parts["group searches"]["rows"] > 0
    searched = [g for g, r in rec["group_runs"].items() if not r["reused"]]
    assert rec["group_evaluations"] >= len(searched) > 0
    text = "\n".join(plan_lines(planned))
    assert "where the time went:" in text
    for name, p in parts.items():
        assert f"  {name}: {p['seconds']:.1f}s" in text


def plan_with(plan_cfg, **plan):
    """The module's config with other plan settings (the group bodies are reused: same search settings)."""
    from search.plan.serving_plan import run_plan

    from search.settings.config import updated

    return run_plan(updated(plan_cfg, plan=updated(plan_cfg.plan, **plan)))


@pytest.fixture(scope="module")
def without_and_with_floor(planned, plan_cfg):
    """Any plan is within the tolerance on the mean; the floor is off, then 1 point. The tiny random BERT's
    adapters are at chance, so no domain loses by itself: every shared body's search reports the support
    task 10 points lower than it scored (its own adapter keeps its accuracy), a domain that loses."""
    from search.plan.bodies import BodySearch

    scored = BodySearch.score_groups  # what a group of one batch and a batch of several go through

    def support_loses(self, groups):
        return [{d: a - 0.10 if d == "support" else a for d, a in acc.items()} for acc in scored(self, groups)]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BodySearch, "score_groups", support_loses)
        return (plan_with(plan_cfg, tolerance=1.0, serving_options=["plain"], max_domain_loss=None),
                plan_with(plan_cfg, tolerance=1.0, serving_options=["plain"], max_domain_loss=0.01))


def test_the_floor_changes_the_chosen_plan_when_a_domain_loses(without_and_with_floor):
    free, floored = (o.record for o in without_and_with_floor)
    one = next(r for r in free["front"] if r["bodies"] == 1)
    assert free["chosen"]["bodies"] == 1 and one["worst_domain"] == "support"  # within tolerance; support loses
    assert one["worst_loss"] == pytest.approx(0.10)
    chosen = floored["chosen"]
    assert chosen["worst_validation_loss"] <= 0.01 and chosen["bodies"] > 1 and ["support"] in [g["domains"] for g in
                                                                                      chosen["groups"]]
    assert "plan.max_domain_loss" in floored["why"]
    # the plan lines say which domain loses, for every G
    from search.plan.serving_plan import plan_lines

    assert "support -10.0" in "\n".join(plan_lines(without_and_with_floor[0]))


@pytest.fixture(scope="module")
def served_bundles(planned, plan_cfg, tmp_path_factory):
    """One body for all five domains (any plan is within the tolerance), served with EMR masks and rescalers,
    then with output rescalers: each exported as a bundle."""
    out = {}
    for option in ("emr", "rescaled"):
        outcome = plan_with(plan_cfg, tolerance=1.0, serving_options=[option], max_domain_loss=None)
        folder = tmp_path_factory.mktemp(f"bundle-{option}") / "bundle"
        from search.plan.bundle import export_bundle

        export_bundle(plan_cfg, folder, run_id=outcome.run_id, register=False)
        out[option] = (folder, outcome.record)
    return out


@pytest.mark.parametrize("option", ["emr", "rescaled"])
def test_a_bundle_with_masks_or_rescalers_reproduces_every_domain_exactly(served_bundles, option):
    folder, rec = served_bundles[option]
    assert rec["chosen"]["bodies"] == 1 and rec["chosen"]["groups"][0]["serving"] == option
    routing = json.loads((folder / "routing.json").read_text())["domains"]
    values = rec["chosen"]["groups"][0]["serving_values"]
    for d, route in routing.items():
        if option == "emr":
            assert route["mask"] == f"masks/{d}.safetensors" and (folder / route["mask"]).is_file()
            assert route["mask_rescaler"] == values[d]["value"] and "rescaler" not in route
        else:
            assert route["rescaler"] == values[d]["value"] and "mask" not in route
    assert (folder / "init.safetensors").is_file() == (option == "emr")
    record = json.loads(next((folder / "bodies").iterdir()).joinpath("mixture.json").read_text())
    assert record["serving"] == option
    for split in ("validation", "test"):
        done = signmix("evaluate", str(folder), "--split", split)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert f"reproduces every domain's logged {split} accuracy" in done.stdout


@pytest.mark.parametrize("option", ["emr", "rescaled"])
def test_the_readme_snippet_serves_a_domain_with_its_mask_and_rescaler_as_signmix_does(served_bundles, option):
    """The README's loading example on a bundle with masks (EMR) or rescalers gives each domain the logits
    that ``signmix evaluate``'s serving (:func:`search.plan.bundle.domain_served`) gives it."""
    import re

    import torch

    from search.plan.bundle import domain_served
    from trainables.model import load_encoder

    folder, rec = served_bundles[option]
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    snippet = re.search(r"```python\n(# a serving bundle.*?)```", readme, flags=re.S).group(1)
    scope: dict = {}
    exec(snippet.replace('"bundle/', f'"{folder}/').replace("f\"bundle/", f"f\"{folder}/"), scope)
    routing = json.loads((folder / "routing.json").read_text())
    reference, tokenizer = load_encoder(routing["base_model"])
    body = next(iter(routing["domains"].values()))["body"]
    reference.load_adapter(str(folder / body), load_as="body", with_head=False, use_safetensors=True)
    reference.set_active_adapters("body")
    reference.eval()
    inputs = tokenizer(["It is excellent.", "It broke after a day."], return_tensors="pt", padding=True)
    for domain in rec["domains"][::-1] + rec["domains"]:  # every switch, both ways
        reference.load_head(str(folder / routing["domains"][domain]["head"]), load_as=domain, use_safetensors=True)
        reference.active_head = domain
        with torch.no_grad(), domain_served(reference, "body", folder, routing["domains"][domain]):
            want = reference(**inputs).logits
        model = scope["use"](domain)
        model.eval()
        with torch.no_grad():
            got = model(**inputs).logits
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
