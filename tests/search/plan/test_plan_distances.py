"""Where a plan starts: the pairwise distances of ``plan.compatibility``, computed on real parts
(tiny BERT adapters of the demo's domains, real Ray trials, the store's measures cache)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests_support import write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plan_cfg(tmp_path_factory, shared_store, tiny_bert, demo_domains):
    from search.settings.config import load_config

    folder = tmp_path_factory.mktemp("plan-distances")
    return load_config(write_config(folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"],
                                    store=shared_store, plan={"probe_size": 8}))


def test_activation_fsd_distances_are_the_probed_matrix_of_the_plans_domains_and_read_from_the_cache_again(plan_cfg):
    from search.workflows.conflict_measures import conflict_measures
    from search.plan.serving_plan import plan_distances, probe_config

    domains = plan_cfg.plan_domains
    assert plan_cfg.plan.compatibility == "activation_fsd"  # the default
    lines: list[str] = []
    distances = plan_distances(plan_cfg, domains, {}, None, progress=lines.append)
    assert sorted(distances) == list(itertools.combinations(domains, 2))
    assert any("probe passes of" in line and "8 examples" in line for line in lines)
    measure = conflict_measures(probe_config(plan_cfg), ["activation_fsd"], targets=domains)["activation_fsd"]
    for (a, b), value in distances.items():
        i, j = measure.indices([a, b])
        assert value == pytest.approx(float(measure.matrix[i, j])) and 0.0 < value < 1.0
    assert len(set(np.round(list(distances.values()), 6))) > 1  # the pairs differ
    again: list[str] = []
    assert plan_distances(plan_cfg, domains, {}, None, progress=again.append) == distances
    assert not any("probe passes" in line for line in again)  # the store's measures cache: no probe trial


def test_cross_head_distances_come_from_each_adapter_under_the_other_domains_heads(plan_cfg):
    from search.settings.config import Config
    from search.plan.bodies import accuracy, baseline_candidates, correctness
    from search.plan.compatibility import cross_head_distances
    from search.plan.serving_plan import plan_distances
    from trainables.store import load_sign_index

    cfg = Config.model_validate({**plan_cfg.model_dump(), "plan": {"compatibility": "cross_heads"}})
    domains = cfg.plan_domains[:3]
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    wanted = {k: v for k, v in baseline_candidates(cfg, domains, cross_heads=True, ties=False).items()
              if k.startswith(("own/", "cross/"))}
    base = correctness(cfg, {k: (spec, ["validation"]) for k, (spec, _) in wanted.items()}, weights,
                       name="plan-distances-cross")
    val = {name: {d: accuracy(v) for d, v in c["validation"].items()} for name, c in base.items()}
    distances = plan_distances(cfg, domains, val, index)
    own = {d: val[f"own/{d}"][d] for d in domains}
    cross = {(a, b): val[f"cross/{a}"][b] for a in domains for b in domains if a != b}
    assert distances == cross_head_distances(own, cross)
    assert sorted(distances) == list(itertools.combinations(domains, 2))
