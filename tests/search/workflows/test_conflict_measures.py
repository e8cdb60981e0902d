"""The conflict measures of a real (tiny) store, and a real search whose gate chooses its measure
(``conflict_measure: auto``): probe passes as Ray Tune trials, cached in the store, logged to MLflow,
``signmix fsd --measures all`` and the report over the search's mixtures. Ray Tune, Optuna, MLflow,
a tiny BERT; one search for the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    """A copy of the shared store (same fingerprints: nothing is retrained) and a search of 10
    mixtures for books with ``conflict_measure: auto``, which computes the four pairwise measures."""
    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search

    folder = tmp_path_factory.mktemp("measures-search")
    shutil.copytree(shared_store, folder / "adapters")
    path = write_config(folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"],
                        search={"num_mixtures": 10, "prune_ratios": [0.0], "conflict_measure": "auto",
                                "probe_size": 16})
    cfg = load_config(path)
    return path, cfg, run_search(cfg)


@pytest.fixture(scope="module")
def measured(searched):
    """The four pairwise measures the search computed, read back (from the store's cache)."""
    from search.workflows.conflict_measures import conflict_measures
    from spaces.measures import PAIRWISE_MEASURES

    _, cfg, _ = searched
    return cfg, conflict_measures(cfg, PAIRWISE_MEASURES)


def test_every_pairwise_measure_is_a_symmetric_matrix_over_the_adapters(measured):
    cfg, measures = measured
    names = tuple(sorted(cfg.domains))
    assert list(measures) == ["weight_fsd", "delta_fsd", "activation_fsd", "cross_head"]
    for m in measures.values():
        assert m.names == names
        np.testing.assert_allclose(m.matrix, m.matrix.T)
        assert np.all(np.diag(m.matrix) == 0) and np.all(np.isfinite(m.matrix))
        assert m.seconds > 0
    # the probe pass covers every transformer layer of the tiny BERT
    assert sorted(measures["activation_fsd"].per_layer) == ["layer.0", "layer.1"]
    # adapted minus base hidden states differ between adapters (the base pass ran without the adapter)
    off_diagonal = measures["activation_fsd"].matrix[np.triu_indices(len(names), k=1)]
    assert np.all(off_diagonal > 0)
    assert sorted(measures["delta_fsd"].per_layer) == ["layer.0", "layer.1"]


def test_weight_fsd_is_the_sign_index_of_the_store(measured):
    from trainables.store import load_sign_index

    cfg, measures = measured
    _, index = load_sign_index(cfg.store_path, cfg.domains)
    np.testing.assert_allclose(measures["weight_fsd"].matrix, index.matrix.numpy())


def test_measures_are_cached_in_the_store_and_logged_once(measured):
    from search.workflows.conflict_measures import MEASURES_DIR, conflict_measures

    cfg, measures = measured
    caches = list(Path(cfg.store_path, MEASURES_DIR).glob("*.json"))
    assert len(caches) == 1
    probes = sorted(caches[0].with_suffix("").joinpath("probes").glob("*.safetensors"))
    assert [p.stem for p in probes] == sorted(cfg.domains)
    stamps = [p.stat().st_mtime_ns for p in probes]
    again = conflict_measures(cfg, ["activation_fsd", "cross_head"])  # from the cache: no probe trial
    assert [p.stat().st_mtime_ns for p in probes] == stamps
    np.testing.assert_array_equal(again["cross_head"].matrix, measures["cross_head"].matrix)
    runs = mlflow_runs(cfg, "tags.`signmix.kind` = 'measures'")
    assert len(runs) == 1 and runs[0].data.params["probe_size"] == "16"
    assert set(runs[0].data.metrics) == {f"{m}_seconds" for m in measures}


def test_a_mixture_of_one_adapter_has_no_merge_gap(measured):
    from search.workflows.conflict_measures import merge_gaps
    from spaces.spec import make_mixture_spec

    cfg, _ = measured
    alone = make_mixture_spec(members=["books"], targets=["books"])
    pair = make_mixture_spec(members=["books", "support"], targets=["books"])
    gaps, seconds = merge_gaps(cfg, [alone, pair])
    assert gaps[alone.key] == 0.0  # the merged model is the member: the ensemble of one agrees
    assert 0.0 <= gaps[pair.key] <= 1.0
    assert seconds > 0


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


def test_activation_fsd_alone_probes_only_the_targets_rows_and_reuses_a_fuller_pass(measured):
    from safetensors import safe_open

    from search.workflows.conflict_measures import MEASURES_DIR, conflict_measures

    cfg, measures = measured
    root = Path(cfg.store_path, MEASURES_DIR)
    before = sorted(root.glob("*.json"))
    # the search's pass scored every head too: activation_fsd alone is read from it, nothing runs
    again = conflict_measures(cfg, ["activation_fsd"])
    np.testing.assert_array_equal(again["activation_fsd"].matrix, measures["activation_fsd"].matrix)
    assert sorted(root.glob("*.json")) == before
    # for another target there is no pass yet: the new one reads that target's rows and scores no head
    light = conflict_measures(cfg, ["activation_fsd"], targets=["kitchen"])
    (cache,) = set(root.glob("*.json")) - set(before)
    probes = sorted(cache.with_suffix("").joinpath("probes").glob("*.safetensors"))
    assert [p.stem for p in probes] == sorted(cfg.domains)
    with safe_open(str(probes[0]), framework="np") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("effect.") for k in keys)  # hidden-state effects, no head's probabilities
    assert np.all(np.isfinite(light["activation_fsd"].matrix))
    assert "cross_head" not in json.loads(cache.read_text())
