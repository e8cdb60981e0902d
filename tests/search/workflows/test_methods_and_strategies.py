"""Every adapter method trains, mixes, exports and reproduces; every strategy runs on Ray."""

from __future__ import annotations

import pytest
from tests_support import mlflow_runs, write_config

from search.settings.config import load_config
from search.tracking.layout import KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("method", ["double_seq_bn", "lora"])
def test_adapter_method_trains_mixes_and_exports(method, tmp_path, ray_cluster, tiny_bert, demo_domains):
    from search.workflows.export import evaluate_export, export_mixture
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    domains = {d: demo_domains[d] for d in ("books", "support")}  # 2-way and 3-way label sets
    cfg = load_config(write_config(
        tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
        adapter={"method": method, "reduction_factor": 4, "rank": 4, "alpha": 8},
        search={"strategy": "exhaustive", "targets": ["books"], "prune_ratios": [0.0, 0.5], "max_fsd": None}))
    assert run_training(cfg).trained == ["books", "support"]
    summary = run_search(cfg)
    assert summary.evaluated == 4 and summary.failed == 0
    out, record = export_mixture(cfg, tmp_path / "best", register=False)
    assert record["adapter_method"] == method
    assert evaluate_export(out)["metrics"]["accuracy/books"] == record["metrics"]["accuracy/books"]


def test_bfloat16_evaluation_exports_and_reproduces(tmp_path, ray_cluster, tiny_bert, demo_domains, shared_store):
    from search.workflows.export import evaluate_export, export_mixture
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    domains = {d: demo_domains[d] for d in ("books", "kitchen")}
    cfg = load_config(write_config(
        tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
        search={"strategy": "exhaustive", "targets": ["books"], "prune_ratios": [0.0], "max_fsd": None,
                "eval_dtype": "bfloat16"}))
    run_training(cfg)
    assert run_search(cfg).evaluated == 2
    out, record = export_mixture(cfg, tmp_path / "best", register=False)
    assert record["evaluation"]["dtype"] == "bfloat16"
    import safetensors.torch
    import torch

    assert all(t.dtype == torch.float32 for t in safetensors.torch.load_file(out / "adapter.safetensors").values())
    assert evaluate_export(out)["metrics"]["accuracy/books"] == record["metrics"]["accuracy/books"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("strategies")
    domains = {d: demo_domains[d] for d in ("books", "movies", "electronics", "kitchen")}
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"],
                                   store=shared_store, search={"max_fsd": None, "prune_ratios": [0.0]}))
    run_training(cfg)
    return cfg


def _with_search(cfg, **search):
    return cfg.model_copy(update={"search": cfg.search.model_copy(update=search)})


def _children(cfg, parent_run_id):
    return mlflow_runs(cfg, f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{KIND_TAG}` = 'mixture'")


def test_greedy_fsd_mixes_the_lowest_fsd_adapters_for_every_size(trained):
    from search.workflows.mixture_search import run_search
    from trainables.store import load_sign_index

    summary = run_search(_with_search(trained, strategy="greedy_fsd"))
    _, index = load_sign_index(trained.store_path, trained.domains)
    means = index.row_means()
    order = sorted(["electronics", "kitchen", "movies"], key=lambda d: (means[d], d))
    expected = {",".join(sorted(["books"] + order[:n])) for n in range(4)}
    got = {r.data.params["members"] for r in _children(trained, summary.parent_run_id)}
    assert got == expected and summary.evaluated == 4


def test_soup_all_evaluates_exactly_the_uniform_average_of_every_adapter(trained):
    from search.workflows.mixture_search import run_search

    summary = run_search(_with_search(trained, strategy="soup_all"))
    (run,) = _children(trained, summary.parent_run_id)
    assert run.data.params["members"] == "books,electronics,kitchen,movies"
    assert run.data.params["weights"] == "0.25,0.25,0.25,0.25"
    assert run.data.tags[STATUS_TAG] == "evaluated"


def test_random_search_stops_at_its_budget_of_distinct_mixtures(trained):
    from search.workflows.mixture_search import run_search

    summary = run_search(_with_search(trained, strategy="random", num_mixtures=5))
    children = _children(trained, summary.parent_run_id)
    assert summary.evaluated == 5 == len(children)
    assert len({r.data.tags["signmix.mixture_key"] for r in children}) == 5


def test_two_objective_search_records_robust_accuracy_and_exports_from_the_pareto_front(
        tmp_path, ray_cluster, tiny_bert, demo_domains, shared_store):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from search.workflows.export import export_mixture
    from search.settings.objectives import pareto_front
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    domains = {d: demo_domains[d] for d in ("books", "kitchen", "movies")}
    cfg = load_config(write_config(
        tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
        search={"strategy": "tpe", "targets": ["books"], "num_mixtures": 4, "prune_ratios": [0.0], "max_fsd": None,
                "fgsm_step": 0.05, "objectives": ["accuracy", "robust_accuracy"], "pareto_rule": "balanced"}))
    run_training(cfg)
    summary = run_search(cfg)
    assert summary.evaluated == 4
    children = _children(cfg, summary.parent_run_id)
    assert all({"robust_accuracy/books", "robust_accuracy_mean"} <= set(r.data.metrics) for r in children)
    # The study's journal, read with Optuna's own reader.
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "optuna.journal")))
    (study,) = optuna.get_all_study_summaries(storage)
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    assert len(loaded.directions) == 2
    assert all(len(t.values) == 2 for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE)
    _, record = export_mixture(cfg, tmp_path / "best", register=False)
    assert record["selected_by"] == "balanced"
    assert record["mlflow_run_id"] in {r.info.run_id for r in pareto_front(children)}
    assert record["mlflow_run_id"] == summary.best_run_id


def test_blackbox_attack_is_logged_for_each_mixture_and_can_be_the_second_objective(
        tmp_path, ray_cluster, tiny_bert, demo_domains, shared_store):
    import json

    from mlflow import MlflowClient

    from search.workflows.export import export_mixture
    from search.settings.objectives import pareto_front
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training
    from search.tracking.layout import MIXTURE_ARTIFACT
    from trainables.mixture_trial import BLACKBOX_EXAMPLES_FILE

    domains = {d: demo_domains[d] for d in ("books", "kitchen", "movies")}
    cfg = load_config(write_config(
        tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
        search={"strategy": "tpe", "targets": ["books"], "num_mixtures": 3, "prune_ratios": [0.0], "max_fsd": None,
                "blackbox_attack": {"examples": 4, "candidates": 4, "query_budget": 40, "similarity_floor": 0.0},
                "objectives": ["accuracy", "bb_robust_accuracy"], "pareto_rule": "robust_accuracy", "confirm": True}))
    run_training(cfg)
    summary = run_search(cfg)
    assert summary.evaluated == 3
    children = _children(cfg, summary.parent_run_id)
    names = {"bb_robust_accuracy/books", "bb_attack_success/books", "bb_queries/books", "bb_words_changed/books",
             "bb_robust_accuracy_mean"}
    assert all(names <= set(r.data.metrics) for r in children)
    assert all(0 < r.data.metrics["bb_queries/books"] <= 40 for r in children)
    # a few attacked texts, readable, beside the mixture's adapter
    client = MlflowClient(cfg.tracking_uri)
    path = client.download_artifacts(children[0].info.run_id, f"{MIXTURE_ARTIFACT}/{BLACKBOX_EXAMPLES_FILE}",
                                     str(tmp_path / "dl"))
    examples = json.loads(open(path, encoding="utf-8").read())["books"]
    assert examples and {"original", "attacked", "label", "attacked_prediction"} <= set(examples[0])
    # the export picks the most robust mixture of the (accuracy, black-box robust accuracy) front
    _, record = export_mixture(cfg, tmp_path / "best", register=False)
    front = pareto_front(children, "bb_robust_accuracy_mean")
    assert record["mlflow_run_id"] in {r.info.run_id for r in front}
    assert record["metrics"]["bb_robust_accuracy_mean"] == max(r.data.metrics["bb_robust_accuracy_mean"] for r in front)
    # the test-split confirmation attacks the chosen mixture and the baselines on the same 4 test rows
    bb = summary.confirmation["blackbox"]
    assert {"chosen", "own", "soup"} <= set(bb) and all(v["books"]["n"] == 4 for v in bb.values())
    conf = client.get_run(summary.confirmation["mlflow_run_id"]).data.metrics
    assert conf["bb_test_robust_accuracy/books"] == bb["chosen"]["books"]["accuracy"]
    assert conf["own_bb_test_robust_accuracy/books"] == bb["own"]["books"]["accuracy"]
    from search.workflows.confirmation_decision import confirmation_lines, record_from_run

    assert record_from_run(client.get_run(summary.confirmation["mlflow_run_id"]))["blackbox"] == bb
    assert any("books under the black-box attack: chosen" in line for line in confirmation_lines(summary.confirmation))
