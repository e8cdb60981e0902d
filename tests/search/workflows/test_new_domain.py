"""A new domain with a few labelled examples (issue 19), through the real runner (Ray Tune, Optuna,
MLflow, adapters on the tiny BERT): books is data-only (train: false, 12 examples), the library is
the other demo domains' adapters; searched weights, two operators, refit heads; the confirmation
carries the new domain's baselines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests_support import mlflow_runs, write_config

from search.settings.config import load_config
from trainables.data import load_domain
from trainables.evaluate import encoded_split
from trainables.settings import train_draw

pytestmark = pytest.mark.integration

LIBRARY = ("electronics", "kitchen", "movies")


@pytest.fixture(scope="module")
def new_domain_search(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("new-domain")
    store = folder / "adapters"
    shutil.copytree(shared_store, store)  # the library's adapters: their fingerprints match, not retrained
    shutil.rmtree(store / "books")
    domains = {d: demo_domains[d] for d in ("books", *LIBRARY)}
    path = write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"], store=str(store),
                        search={"strategy": "tpe", "num_mixtures": 5, "prune_ratios": [0.0], "max_fsd": None,
                                "merge_methods": ["average", "ties"], "densities": [0.5], "lambdas": [1.0],
                                "weights": "searched", "head": "refit", "confirm": True, "adaptersoup_k": 2},
                        default_conflict_measure=True)  # the product's activation FSD, probed on the 12 rows
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["domains"]["books"].update({"train": False, "max_train_examples": 12, "draw_seed": 3, "epochs": 3})
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    training = run_training(cfg)
    return cfg, training, run_search(cfg)


def test_a_data_only_target_is_never_a_member_and_its_weights_are_searched(new_domain_search):
    cfg, training, summary = new_domain_search
    assert cfg.member_domains == sorted(LIBRARY) and cfg.data_only_domains == ["books"]
    assert not cfg.search.require_targets  # the default when a target is data-only
    # Only the adapter trained on the few examples (the confirmation's baseline) was trained, for
    # its own number of epochs (domains.books.epochs: 3, training.epochs: 1).
    assert training.trained == ["books"] and sorted(training.skipped) == sorted(LIBRARY)
    (train_run,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'training'")
    from mlflow import MlflowClient

    history = MlflowClient(cfg.tracking_uri).get_metric_history(train_run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    runs = mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated' and tags.`signmix.kind` = 'mixture'")
    assert summary.evaluated == 5 and len(runs) == 5
    for r in runs:
        members = r.data.params["members"].split(",")
        assert "books" not in members and set(members) <= set(LIBRARY)
        assert r.data.params["targets"] == "books" and r.data.params["head"] == "refit"
        assert r.data.params["merge_method"] in ("average", "ties")
    assert any(r.data.params.get("weights") not in (None, "uniform") for r in runs)


def test_the_default_conflict_measure_probes_the_library_on_the_few_rows_and_keeps_them(new_domain_search):
    from search.workflows.conflict_measures import MEASURES_DIR, conflict_measures

    cfg, _, _ = new_domain_search
    (search_run,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")
    assert search_run.data.tags["signmix.gate_measure"] == "activation_fsd"
    probes = {p: p.stat().st_mtime_ns for p in (Path(cfg.store_path) / MEASURES_DIR).glob("*/probes/*.safetensors")}
    assert sorted(p.stem for p in probes) == sorted(LIBRARY)  # one pass per library adapter, kept in the store
    measure = conflict_measures(cfg, ["activation_fsd"])["activation_fsd"]  # the next search reads them back
    assert sorted(measure.names) == sorted(LIBRARY)
    assert {p: p.stat().st_mtime_ns for p in probes} == probes  # no pass ran again


def test_the_refit_head_is_fit_on_the_few_examples_drawn_with_their_seed(new_domain_search):
    cfg, _, _ = new_domain_search
    assert train_draw(cfg.training, cfg.domains["books"]) == (12, 3)
    drawn = load_domain("books", cfg.domains["books"], splits=("train",), max_train_examples=12, seed=3)
    encoded = encoded_split(cfg.experiment(), "books", "train", list(drawn.label_names))
    assert len(encoded) == 12 and encoded.labels == list(drawn.splits["train"]["label"])


def test_the_confirmation_compares_the_chosen_mixture_with_the_new_domain_baselines(new_domain_search):
    cfg, _, summary = new_domain_search
    record = summary.confirmation
    comparison = record["new_domain"]["books"]
    assert set(comparison["baselines"]) == {"base", "fine_tuned", "soup_all", "adaptersoup", "best_single"}
    for b, row in comparison["baselines"].items():
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"], b
        assert row["lead_low"] <= row["lead"] <= row["lead_high"] and 0.0 <= row["p"] <= 1.0
        assert row["beaten"] == (row["lead_low"] > 0.0)
    assert len(comparison["baselines"]["adaptersoup"]["members"]) == 2
    assert set(comparison["baselines"]["adaptersoup"]["members"]) <= set(LIBRARY)
    assert comparison["baselines"]["soup_all"]["members"] == sorted(LIBRARY)
    assert "books" not in record["chosen_members"]
    # selection reads the new domain's validation split: the small-validation warning says how wide
    assert any(w.startswith("target books: 30 validation examples") for w in summary.validation_warnings)
    # the summary says which baselines the chosen mixture beats beyond the interval
    assert any("the chosen mixture beats" in n for n in record["notes"])
    confirmation = mlflow_runs(cfg, "tags.`signmix.kind` = 'confirmation'")
    assert len(confirmation) == 1
    metrics = confirmation[0].data.metrics
    for b in ("base", "fine_tuned", "soup_all", "adaptersoup", "best_single"):
        assert f"nd_{b}_test_accuracy/books" in metrics and f"nd_{b}_beaten/books" in metrics


def test_the_search_scores_the_nearest_adapters_alone_first_and_counts_them_in_the_budget(new_domain_search):
    from search.workflows.new_domain import similar_domains

    cfg, _, summary = new_domain_search
    ranked = [d for d, _ in similar_domains(cfg, "books", len(LIBRARY))]
    runs = sorted(mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated' and tags.`signmix.kind` = 'mixture'"),
                  key=lambda r: r.info.start_time)
    members = [r.data.params["members"].split(",") for r in runs]
    # num_mixtures 5: the two nearest adapters alone (at most half the budget), before any combination
    # (proposed in similarity order, tests/search/proposals/test_searcher.py; two run at once here, so
    # their MLflow start times may swap)
    assert sorted(members[:2]) == sorted([[ranked[0]], [ranked[1]]])
    assert all(r.data.params["head"] == "refit" for r in runs[:2])
    # then the greedy path from the best single (scored already, not again): the two singles together,
    # then all three
    assert [frozenset(m) for m in members[2:4]] == [frozenset(ranked[:2]), frozenset(ranked)]
    # the singles are two of the five evaluated mixtures: the budget counts them
    assert summary.evaluated == 5 and len(runs) == 5 and sum(len(m) == 1 for m in members) >= 2
    assert f"1 library adapter(s) not scored alone, the budget being too small ({ranked[2]})" in summary.singles
    from search.workflows.confirmation_decision import trust_lines

    assert summary.singles in trust_lines(summary)


def test_the_similarity_order_puts_the_nearest_domain_first_on_the_greedy_path():
    from search.workflows.new_domain import SimilarityOrder
    from search.proposals.strategies import greedy_path
    from spaces.space import MixtureSpace

    space = MixtureSpace(domains=("a", "b", "c", "d"), targets=("new",), require_targets=False, max_fsd=None)
    order = SimilarityOrder([("c", 0.9), ("a", 0.7), ("d", 0.2), ("b", -0.1)])
    path = [space.to_mixture_spec(p).members for p in greedy_path(space, order)]
    assert [tuple(m) for m in path] == [("c",), ("a", "c"), ("a", "c", "d"), ("a", "b", "c", "d")]


def test_the_best_single_adapter_competes_for_the_export_and_the_summary_says_whether_it_is_it(new_domain_search):
    _, _, summary = new_domain_search
    record = summary.confirmation
    assert "best_single" in record["validation"]["vs_baselines"]  # it competed in the tie rule
    single = record["new_domain"]["books"]["baselines"]["best_single"]
    exported_single = sorted(record["chosen_members"]) == sorted(single["members"])
    if record["chosen_baseline"] == "best_single":
        assert exported_single
    said = [n for n in record["notes"] if "the export is" in n]
    assert len(said) == 1 and (("the export is that one adapter" in said[0]) == exported_single)
    assert ("the export is not the best single adapter" in said[0]) == (not exported_single)
