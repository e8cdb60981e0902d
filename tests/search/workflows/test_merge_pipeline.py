"""search with TIES/DARE, searched weights and refit heads -> export -> evaluate, on the tiny
trained store, with real Ray, Optuna, MLflow (SQLite) and ``adapters``."""

from __future__ import annotations

import json

import pytest
from tests_support import mlflow_runs

from search.settings.config import load_config
from search.tracking.layout import KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration

OPERATORS = {"average", "ties", "dare_ties"}


@pytest.fixture(scope="module")
def merged_search(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    from tests_support import write_config

    from search.workflows.mixture_search import run_search

    folder = tmp_path_factory.mktemp("merge-pipeline")
    domains = {d: demo_domains[d] for d in ("books", "movies", "electronics")}
    cfg = load_config(write_config(
        folder, base_model=tiny_bert, domains=domains, targets=["books", "movies"], store=shared_store,
        search={"strategy": "random", "num_mixtures": 4, "prune_ratios": [0.0], "max_fsd": None, "seed": 3,
                "merge_methods": sorted(OPERATORS), "densities": [0.5, 0.2], "drop_rates": [0.3],
                "lambdas": [1.0], "weights": "searched", "head": "refit", "confirm": False}))
    return cfg, run_search(cfg)


def test_mixtures_record_operator_parameters_and_refit_cost_in_mlflow(merged_search):
    cfg, summary = merged_search
    assert summary.evaluated == 4 and summary.failed == 0
    runs = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture' and tags.`{STATUS_TAG}` = 'evaluated'")
    assert len(runs) == 4
    for run in runs:
        p = run.data.params
        assert p["merge_method"] in OPERATORS and p["head"] == "refit"
        assert ("density" in p) == (p["merge_method"] == "ties")
        assert ("drop_rate" in p) == (p["merge_method"] == "dare_ties")
        assert run.data.metrics["refit_seconds"] > 0
    assert {r.data.params["merge_method"] for r in runs} - {"average"}, "no TIES or DARE mixture was evaluated"


def test_export_carries_refit_heads_and_evaluate_reproduces_the_logged_accuracy(merged_search, tmp_path):
    from safetensors.torch import load_file

    from search.workflows.export import evaluate_export, export_mixture
    from trainables.store import AdapterStore

    cfg, _ = merged_search
    runs = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture' and tags.`{STATUS_TAG}` = 'evaluated'")
    run = next(r for r in runs if r.data.params["merge_method"] != "average")
    out, record = export_mixture(cfg, tmp_path / "best", run_id=run.info.run_id, register=False)

    saved = json.loads((out / "mixture.json").read_text())
    assert saved["merge_method"] == run.data.params["merge_method"] and saved["head"] == "refit"
    assert saved["merge_parameters"]["lambda"] == 1.0
    # The heads are the refit ones, not copies of the trained heads.
    for target in ("books", "movies"):
        refit = load_file(str(out / "heads" / target / "model_head.safetensors"))
        trained = load_file(str(AdapterStore(cfg.store_path).path(target) / "model_head.safetensors"))
        assert refit.keys() != trained.keys() or any(not (refit[k] == trained[k]).all() for k in refit)

    result = evaluate_export(out)
    for target in ("books", "movies"):
        assert result["metrics"][f"accuracy/{target}"] == run.data.metrics[f"accuracy/{target}"]


def test_the_export_loads_with_plain_adapters_calls(merged_search, tmp_path):
    """The README's example: adapter + first target's refit head, then another target's head."""
    from adapters import AutoAdapterModel

    from search.workflows.export import export_mixture

    cfg, summary = merged_search
    out, record = export_mixture(cfg, tmp_path / "best", run_id=summary.best_run_id, register=False)
    model = AutoAdapterModel.from_pretrained(cfg.base_model)
    name = model.load_adapter(str(out), use_safetensors=True)
    model.set_active_adapters(name)
    assert model.active_head == name and model.heads[name].config["num_labels"] == 2
    model.load_head(str(out / "heads" / "movies"), load_as="movies", use_safetensors=True)
    assert "movies" in model.heads and record["head"] == "refit"
