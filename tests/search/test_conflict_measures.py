"""The conflict measures of a real (tiny) store: probe passes as Ray Tune trials, cached, logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def measured(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    """A copy of the shared store (same fingerprints: nothing is retrained) and its four
    pairwise measures, computed once for the module."""
    from search.config import load_config
    from search.conflict_measures import conflict_measures
    from spaces.measures import PAIRWISE_MEASURES

    folder = tmp_path_factory.mktemp("measures")
    shutil.copytree(shared_store, folder / "adapters")
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"],
                                   search={"probe_size": 16}))
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
    from search.conflict_measures import MEASURES_DIR, conflict_measures

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
    from search.conflict_measures import merge_gaps
    from spaces.spec import make_mixture_spec

    cfg, _ = measured
    alone = make_mixture_spec(members=["books"], targets=["books"])
    pair = make_mixture_spec(members=["books", "support"], targets=["books"])
    gaps, seconds = merge_gaps(cfg, [alone, pair])
    assert gaps[alone.key] == 0.0  # the merged model is the member: the ensemble of one agrees
    assert 0.0 <= gaps[pair.key] <= 1.0
    assert seconds > 0
