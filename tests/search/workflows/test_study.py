"""The in-domain study enumerates exactly the expected mixtures, and runs on Ray."""

from __future__ import annotations

import itertools

import pytest
import torch

from search.settings.config import StudyConfig
from search.workflows.study import study_items
from spaces.fsd import SignIndex, greedy_members


def index_of(n: int) -> SignIndex:
    names = [f"d{i}" for i in range(n)]
    gen = torch.Generator().manual_seed(n)
    return SignIndex.from_weights({d: {"w": torch.randn(64, generator=gen)} for d in names})


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n_targets", [1, 2, None])
def test_subsets_part_is_every_subset_containing_a_target_once(n, n_targets):
    index = index_of(n)
    targets = None if n_targets is None else list(index.names[: min(n_targets, n)])
    study = StudyConfig(targets=targets, sweep_ratios=[], sparse_sizes=[])
    items = study_items(index.names, study, index)
    t = n if targets is None else len(targets)
    assert len(items) == (2**n - 1) - (2 ** (n - t) - 1)
    # every target gets all 2^(N-1) subsets that contain it, evaluated on that target
    for target in targets or index.names:
        with_target = [i for i in items if target in i.spec.targets]
        assert len(with_target) == 2 ** (n - 1)
    assert len({i.spec.key for i in items}) == len(items)


@pytest.mark.parametrize("n, max_size", [(4, 1), (4, 2), (5, 3), (6, 6)])
def test_max_size_limits_the_subsets(n, max_size):
    index = index_of(n)
    items = study_items(index.names, StudyConfig(max_size=max_size, sweep_ratios=[], sparse_sizes=[]), index)
    assert len(items) == sum(len(list(itertools.combinations(range(n), k))) for k in range(1, max_size + 1))
    assert max(i.spec.k for i in items) == max_size


def test_greedy_members_takes_the_lowest_mean_fsd_and_the_mirror_the_highest():
    matrix = torch.tensor([[0.0, 0.1, 0.4, 0.3],
                           [0.1, 0.0, 0.2, 0.5],
                           [0.4, 0.2, 0.0, 0.6],
                           [0.3, 0.5, 0.6, 0.0]], dtype=torch.float64)
    index = SignIndex(names=["a", "b", "c", "d"], signs=torch.zeros(4, 8, dtype=torch.int8), matrix=matrix)
    # row means: a 0.2667, b 0.2667, c 0.4, d 0.4667
    means = index.row_means()
    assert greedy_members(means, "c", 3) == ("a", "b", "c")
    assert greedy_members(means, "a", 2) == ("a", "b")
    assert greedy_members(means, "a", 3, largest=True) == ("a", "c", "d")


def test_sweep_and_sparse_mixing_parts():
    index = index_of(4)
    study = StudyConfig(targets=["d0"], sweep_ratios=[0.0, 0.5, 1.0], sparse_sizes=[2, 3], sparsities=[0.8, 0.9],
                        sparse_layers=1)
    items = study_items(index.names, study, index)
    sweep = [i for i in items if i.part == "sweep"]
    # ratio 0.0 of the single adapter is the k=1 subset, already in the subsets part: reused
    assert sorted(i.spec.prune_ratio for i in sweep) == [0.5, 1.0]
    sparse = [i for i in items if i.part == "sparse_mixing"]
    assert len(sparse) == 4 and {i.spec.prune_method for i in sparse} == {"conflict_layers"}
    for item in sparse:
        size = int(item.tags["signmix.sparse_size"])
        assert item.spec.members == greedy_members(index.row_means(), "d0", size)
        assert item.spec.targets == ("d0",) and item.spec.prune_layers == 1


@pytest.mark.integration
def test_study_runs_every_part_on_ray_and_records_it(tmp_path, ray_cluster, tiny_bert, demo_domains, shared_store):
    from tests_support import mlflow_runs, write_config

    from search.settings.config import load_config
    from search.workflows.adapter_training import run_training
    from search.workflows.study import run_study
    from search.tracking.layout import KIND_TAG, STATUS_TAG, STUDY_PART_TAG

    domains = {d: demo_domains[d] for d in ("books", "movies", "support")}
    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
                                   store=shared_store, study={"sweep_ratios": [0.0, 0.5, 1.0], "sparse_sizes": [2],
                                          "sparsities": [0.8], "sparse_layers": 1}))
    run_training(cfg)
    summary = run_study(cfg)
    assert summary.by_part == {"subsets": 7, "sweep": 6, "sparse_mixing": 3}
    assert summary.evaluated == 16 and summary.failed == 0
    children = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture'")
    assert len(children) == 16 and all(r.data.tags[STATUS_TAG] == "evaluated" for r in children)
    for run in children:
        members = run.data.params["members"].split(",")
        assert {"fsd_mean_pairwise", "fsd_any_conflict"} <= set(run.data.metrics)
        if run.data.tags[STUDY_PART_TAG] == "subsets":
            assert all(f"accuracy/{m}" in run.data.metrics for m in members)  # every member is a target
    full = [r for r in children if r.data.params["members"] == "books,movies,support"]
    assert len(full) == 1 and full[0].data.metrics["fsd_mean_pairwise"] > 0
    off = [r for r in children if r.data.params["prune_ratio"] == "1"]
    assert len(off) == 3 and all(r.data.metrics["sparsity"] == 1.0 for r in off)
