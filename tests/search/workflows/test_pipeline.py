"""train -> search -> export -> evaluate on a tiny random BERT, with real Ray, Optuna,
MLflow (SQLite) and ``adapters``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import mlflow_runs

from search.settings.config import load_config
from search.tracking.layout import KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_cluster, tiny_bert, demo_domains):
    from tests_support import write_config

    from search.workflows.mixture_search import run_search

    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("pipeline")
    domains = {d: demo_domains[d] for d in ("books", "electronics", "support")}
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"]))
    training = run_training(cfg)
    # A fixed max_fsd (the median FSD of the mixtures with 2+ members) filters whatever the
    # evidence; `auto` would not filter in a space this small (tests/search/proposals/test_fsd_gate.py).
    from trainables.store import load_sign_index

    _, index = load_sign_index(cfg.store_path, cfg.domains)
    fsds = sorted(index.subset_fsd(m) for m in (("books", "electronics"), ("books", "support"),
                                                 ("books", "electronics", "support")))
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"],
                                   search={"max_fsd": fsds[1]}))
    summary = run_search(cfg)
    return cfg, training, summary


def test_training_trains_every_domain_and_logs_one_run_each(pipeline):
    cfg, training, _ = pipeline
    assert sorted(training.trained) == ["books", "electronics", "support"] and not training.failed
    runs = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'training'")
    assert sorted(r.data.tags["signmix.domain"] for r in runs) == ["books", "electronics", "support"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert "val_accuracy" in run.data.metrics and "train_loss" in run.data.metrics
        assert run.data.params["adapter.method"] == "seq_bn"


def test_training_again_with_the_same_settings_skips_every_domain(pipeline):
    from search.workflows.adapter_training import run_training

    cfg, _, _ = pipeline
    again = run_training(cfg)
    assert again.trained == [] and sorted(again.skipped) == ["books", "electronics", "support"]


def test_prefilter_rejects_high_fsd_proposals_before_they_become_trials(pipeline):
    cfg, _, summary = pipeline
    # exhaustive over {books} x {electronics, support} subsets x 2 ratios = 8 proposals
    assert summary.evaluated + summary.filtered_mixtures == 8
    assert summary.filtered_mixtures >= 1, "the median threshold must reject some mixture"
    children = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture'")
    by_status = {}
    for run in children:
        by_status.setdefault(run.data.tags[STATUS_TAG], []).append(run)
    assert len(by_status["filtered"]) == summary.filtered_mixtures
    assert len(by_status["evaluated"]) == summary.evaluated
    max_fsd = summary.max_fsd
    filtered_keys = {r.data.tags["signmix.mixture_key"] for r in by_status["filtered"]}
    for run in by_status["filtered"]:
        assert run.data.metrics["fsd"] > max_fsd
        assert "accuracy_mean" not in run.data.metrics
        assert run.info.status == "FINISHED"
    # No Ray trial was ever created for a filtered mixture.
    trial_keys = {json.loads(p.read_text())["mixture_key"]
                  for p in Path(cfg.storage_path).glob("search-*/*/params.json")}
    assert len(trial_keys) == summary.evaluated
    assert not trial_keys & filtered_keys
    # Ray Tune's JSON results, without its CSV and TensorBoard copies of them.
    trial_dirs = list(Path(cfg.storage_path).glob("search-*/*/"))
    assert all((d / "result.json").exists() for d in trial_dirs if (d / "params.json").exists())
    assert not list(Path(cfg.storage_path).glob("search-*/*/progress.csv"))
    assert not list(Path(cfg.storage_path).glob("search-*/*/events.out.tfevents*"))


def test_every_evaluated_mixture_has_metrics_and_its_pruned_adapter(pipeline):
    cfg, _, summary = pipeline
    client_runs = mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'")
    keys = [r.data.tags["signmix.mixture_key"] for r in client_runs]
    assert len(keys) == len(set(keys)), "one run per mixture"
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    for run in client_runs:
        m = run.data.metrics
        assert 0.0 <= m["accuracy_mean"] <= 1.0 and m["accuracy/books"] == m["accuracy_mean"]
        assert {"fsd", "sparsity", "eval_seconds", "macro_f1/books"} <= set(m)
        assert 100 < m["worker_peak_rss_mib"] < 16_384  # a Python worker holding a model
        files = {f.path for f in client.list_artifacts(run.info.run_id, "mixture")}
        assert "mixture/adapter.safetensors" in files and "mixture/heads" in files
        if run.data.params["prune_ratio"] == "0.5":
            # members are pruned to 50% before averaging: one member keeps exactly half
            # its weights, an average is zero only where every member is.
            if run.data.params["k"] == "1":
                assert m["sparsity"] == pytest.approx(0.5, abs=1e-3)
            else:
                assert 0.0 < m["sparsity"] < 0.5
        else:
            assert m["sparsity"] == 0.0
    parent = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["evaluated"] == summary.evaluated
    assert not mlflow_runs(cfg, "attributes.status = 'RUNNING'")


def test_export_loads_with_plain_adapters_and_reproduces_the_logged_accuracy(pipeline, tmp_path):
    import torch
    from adapters import AutoAdapterModel

    from search.workflows.export import evaluate_export, export_mixture

    cfg, _, summary = pipeline
    out, record = export_mixture(cfg, tmp_path / "best")
    assert record["mlflow_run_id"] == summary.best_run_id
    assert record["metrics"]["accuracy_mean"] == summary.best_accuracy
    assert set(record) >= {"members", "weights", "prune_method", "prune_ratio", "fsd", "metrics", "base_model",
                           "adapter_method", "signmix_version", "mlflow_run_id"}
    assert record["registered_model"]["version"] >= 1

    model = AutoAdapterModel.from_pretrained(cfg.base_model)
    name = model.load_adapter(str(out), use_safetensors=True)
    model.set_active_adapters(name)
    logits = model(input_ids=torch.tensor([[101, 2023, 2338, 102]])).logits
    assert logits.shape == (1, 2)

    again = evaluate_export(out, "validation")["metrics"]
    assert again["accuracy/books"] == record["metrics"]["accuracy/books"]
    test = evaluate_export(out, "test")["metrics"]
    assert 0.0 <= test["accuracy/books"] <= 1.0


def test_a_search_in_batches_records_every_mixture_as_its_own_trial_did(pipeline, tmp_path, tiny_bert, demo_domains):
    """mixtures_per_trial: 3 runs the 8 mixtures in 3 Ray trials; each mixture still gets its own
    MLflow run, metrics and artifact (handed over by Ray Tune's on_checkpoint), equal to what
    a trial of its own measured, and the best exports and reproduces its accuracy."""
    from tests_support import write_config

    from search.workflows.export import evaluate_export, export_mixture
    from search.workflows.mixture_search import run_search

    cfg, _, _ = pipeline
    domains = {d: demo_domains[d] for d in ("books", "electronics", "support")}
    batched = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
                                       store=cfg.store_path, search={"max_fsd": None, "mixtures_per_trial": 3}))
    summary = run_search(batched)
    assert (summary.evaluated, summary.failed) == (8, 0)
    runs = mlflow_runs(batched, f"tags.`{STATUS_TAG}` = 'evaluated'")
    assert len(runs) == 8 and not mlflow_runs(batched, "attributes.status = 'RUNNING'")
    assert len({r.data.tags["signmix.trial_id"] for r in runs}) == 3, "8 mixtures in 3 trials of up to 3"
    from mlflow import MlflowClient

    client = MlflowClient(batched.tracking_uri)
    for run in runs:
        files = {f.path for f in client.list_artifacts(run.info.run_id, "mixture")}
        assert "mixture/adapter.safetensors" in files and "mixture/heads" in files
    alone = {r.data.tags["signmix.mixture_key"]: r.data.metrics
             for r in mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'")}
    both = [r for r in runs if r.data.tags["signmix.mixture_key"] in alone]
    assert len(both) >= 3
    for run in both:
        own = alone[run.data.tags["signmix.mixture_key"]]
        assert (run.data.metrics["accuracy_mean"], run.data.metrics["sparsity"]) == (own["accuracy_mean"], own["sparsity"])
    out, record = export_mixture(batched, tmp_path / "best")
    assert record["mlflow_run_id"] == summary.best_run_id
    assert evaluate_export(out, "validation")["metrics"]["accuracy/books"] == record["metrics"]["accuracy/books"]


def test_export_refuses_a_non_empty_folder_and_leaves_it_untouched(pipeline, tmp_path):
    from search.workflows.export import export_mixture
    from spaces.errors import UsageError

    cfg, _, _ = pipeline
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not empty"):
        export_mixture(cfg, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
