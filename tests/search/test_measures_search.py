"""A real search whose gate chooses its conflict measure (``conflict_measure: auto``), and
``signmix fsd --measures all`` over its evaluated mixtures: Ray Tune, Optuna, MLflow, a tiny BERT."""

from __future__ import annotations

import shutil

import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    from search.config import load_config
    from search.runner import run_search

    folder = tmp_path_factory.mktemp("measures-search")
    shutil.copytree(shared_store, folder / "adapters")  # same fingerprints: nothing is retrained
    path = write_config(folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"],
                        search={"num_mixtures": 10, "prune_ratios": [0.0], "conflict_measure": "auto",
                                "probe_size": 16})
    cfg = load_config(path)
    return path, cfg, run_search(cfg)


def test_the_search_tracks_every_measure_and_says_which_one_filters(searched):
    from search.tracking.layout import GATE_MEASURE_TAG
    from spaces.measures import PAIRWISE_MEASURES

    _, cfg, summary = searched
    assert summary.evaluated == 10
    (parent,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")
    chosen = parent.data.tags[GATE_MEASURE_TAG]
    assert chosen in (*PAIRWISE_MEASURES, "none")
    for name in PAIRWISE_MEASURES:
        assert f"gate_rho/{name}" in parent.data.metrics and f"gate_p/{name}" in parent.data.metrics
    # the summary says which measure, or that none shows evidence, with the numbers
    assert summary.fsd_gate.startswith((f"{chosen} predicts accuracy here", "No measure predicts accuracy",
                                        "Waiting for mixtures of every size"))
    assert len(mlflow_runs(cfg, "tags.`signmix.kind` = 'measures'")) == 1


def test_fsd_measures_all_prints_every_matrix_and_the_evidence_best_first(searched, capsys):
    from search.cli.main import main

    path, cfg, _ = searched
    out_csv = path.parent / "fsd.csv"
    assert main(["fsd", str(path), "--measures", "all", "--out", str(out_csv)]) == 0
    out = capsys.readouterr().out
    for name in ("weight_fsd", "delta_fsd", "activation_fsd", "cross_head"):
        assert f"\n{name}: " in out
        assert (path.parent / f"fsd_{name}.csv").is_file()
    assert "merge_gap: disagreement of the merged model" in out
    assert "Conflict measures against accuracy (10 evaluated mixtures of books, best first):" in out
    table = out.split("best first):")[1]
    assert all(name in table for name in ("weight_fsd", "delta_fsd", "activation_fsd", "cross_head", "merge_gap"))
    assert "Conflict gate (conflict_measure: auto) would choose: " in out


def test_the_report_draws_one_scatter_per_cached_measure(searched, tmp_path):
    import csv

    from search.reporting.report import build_report

    _, cfg, _ = searched
    written = build_report(cfg, tmp_path / "report")
    assert tmp_path / "report" / "measures_vs_accuracy.png" in written
    with open(tmp_path / "report" / "measures_vs_accuracy.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["measure"] for r in rows} == {"weight_fsd", "delta_fsd", "activation_fsd", "cross_head"}
    assert all(int(r["k"]) >= 2 for r in rows)
