"""The test-split confirmation at the end of a search (real Ray, MLflow, adapters on the tiny BERT):
selection never reads test, the confirmation's test numbers never read validation, and the
numbers land in MLflow, the summary and mixture.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests_support import mlflow_runs

from search.settings.config import load_config

pytestmark = pytest.mark.integration

DOMAINS = ("books", "electronics", "kitchen")


def flip_labels(folder: Path, split: str) -> None:
    """Poison one split on disk: every binary label turned into the other."""
    path = folder / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.write_text("".join(json.dumps({**r, "label": 1 - r["label"]}) + "\n" for r in rows), encoding="utf-8")


def search_on(folder: Path, demo_domains, tiny_bert, store: str, poison: str | None):
    """An exhaustive search over copies of the domains (books the target), adapters from ``store``."""
    from tests_support import write_config

    from search.workflows.mixture_search import run_search

    domains = {}
    for d in DOMAINS:
        domains[d] = folder / "data" / d
        shutil.copytree(demo_domains[d], domains[d])
        if poison:
            flip_labels(domains[d], poison)
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"], store=store,
                                   search={"prune_ratios": [0.0], "max_fsd": None, "num_mixtures": 4,
                                                                   "confirm": True}))
    return cfg, run_search(cfg)


@pytest.fixture(scope="module")
def searches(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    return {poison: search_on(tmp_path_factory.mktemp(f"confirm-{poison}"), demo_domains, tiny_bert, shared_store,
                              poison)
            for poison in (None, "test", "validation")}


def validation_by_key(cfg) -> dict[str, float]:
    return {r.data.tags["signmix.mixture_key"]: r.data.metrics["accuracy_mean"]
            for r in mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated'")}


def test_the_confirmation_run_logs_test_accuracy_intervals_and_mcnemar(searches):
    cfg, summary = searches[None]
    record = summary.confirmation
    assert record is not None and summary.chosen_run_id == record["chosen_run_id"]
    runs = mlflow_runs(cfg, "tags.`signmix.kind` = 'confirmation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
    m = run.data.metrics
    assert m["test_ci_low/books"] <= m["test_accuracy/books"] <= m["test_ci_high/books"]
    assert m["test_ci_high/books"] - m["test_ci_low/books"] > 0.05, "30 test examples: a wide interval"
    assert 0.0 <= m["p_vs_own/books"] <= 1.0 and m["test_n/books"] == 30
    for prefix in ("own_", "soup_", "greedy_"):
        assert m[f"{prefix}test_ci_low/books"] <= m[f"{prefix}test_accuracy/books"] <= m[f"{prefix}test_ci_high/books"]
    assert run.data.params["soup_members"] == "books,electronics,kitchen"
    assert m["test_accuracy/books"] == record["targets"]["books"]["accuracy"]
    assert "val_lead_vs_own/books" in m


def test_selection_never_reads_the_test_split(searches):
    clean_cfg, clean = searches[None]
    poisoned_cfg, poisoned = searches["test"]
    # Every mixture's validation accuracy, and so the choice, is unchanged by poisoned test labels ...
    assert validation_by_key(poisoned_cfg) == validation_by_key(clean_cfg)
    assert poisoned.best_label == clean.best_label
    assert poisoned.confirmation["chosen_members"] == clean.confirmation["chosen_members"]
    # ... while the confirmation reads the test split: flipped labels flip every accuracy.
    for key in ("own", "soup"):
        assert poisoned.confirmation["baselines"][key]["targets"]["books"]["accuracy"] == pytest.approx(
            1 - clean.confirmation["baselines"][key]["targets"]["books"]["accuracy"])


def test_the_confirmations_test_numbers_never_read_validation(searches):
    clean_cfg, clean = searches[None]
    poisoned_cfg, poisoned = searches["validation"]
    clean_val, poisoned_val = validation_by_key(clean_cfg), validation_by_key(poisoned_cfg)
    assert all(poisoned_val[k] == pytest.approx(1 - v) for k, v in clean_val.items()), "validation was poisoned"
    for key in ("own", "soup"):
        assert poisoned.confirmation["baselines"][key]["targets"]["books"] == \
            clean.confirmation["baselines"][key]["targets"]["books"]


def test_export_writes_the_confirmation_into_mixture_json(searches, tmp_path):
    from search.workflows.export import export_mixture

    cfg, summary = searches[None]
    out, record = export_mixture(cfg, tmp_path / "best", register=False)
    assert record["mlflow_run_id"] == summary.chosen_run_id
    written = json.loads((out / "mixture.json").read_text(encoding="utf-8"))["confirmation"]
    assert written["split"] == "test" and written["chosen_run_id"] == summary.chosen_run_id
    books = written["targets"]["books"]
    assert books["ci_low"] <= books["accuracy"] <= books["ci_high"] and 0 <= books["p_vs_own"] <= 1
    assert books["accuracy"] == summary.confirmation["targets"]["books"]["accuracy"]
    assert set(written["baselines"]) >= {"own", "soup"}
    # The export reused the search's confirmation: no second confirmation run.
    assert len(mlflow_runs(cfg, "tags.`signmix.kind` = 'confirmation'")) == 1
