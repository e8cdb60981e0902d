"""Group searches side by side (search/plan/concurrent_searches.py) on the session's real Ray cluster,
real Optuna and a real MLflow store: what comes back when one of them fails."""

from __future__ import annotations

import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration


def test_a_failing_search_raises_its_own_error_and_the_other_is_stopped(tmp_path, tiny_bert, demo_domains,
                                                                                  shared_store, ray_cluster):
    from search.plan.bodies import group_config
    from search.plan.concurrent_searches import SearchJob, run_searches
    from search.settings.config import load_config, updated
    from search.tracking.layout import KIND_TAG
    from spaces.errors import SignmixError

    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=dict(demo_domains), targets=None,
                                   store=shared_store,
                                   search={"strategy": "tpe", "prune_ratios": [0.0, 0.2, 0.4, 0.6, 0.8],
                                           "max_concurrent": 1},
                                   plan={"mixtures_per_group": 5}))
    good = group_config(cfg, ("books", "movies"))
    bad = updated(group_config(cfg, ("kitchen", "support")), store=str(tmp_path / "no-store"))
    lines: list[str] = []
    with pytest.raises(SignmixError) as caught:
        run_searches([SearchJob("books+movies", good, {"name_suffix": "g1"}),
                      SearchJob("kitchen+support", bad, {"name_suffix": "g2"})], progress=lines.append)
    assert type(caught.value).__module__.startswith("spaces.")  # the search's own error, not Ray's wrapper
    assert "no-store" in str(caught.value)
    # the other search was stopped and waited for, not left running: no run of it is still open (it may
    # not have reached MLflow before the failure)
    from mlflow import MlflowClient

    if MlflowClient(good.tracking_uri).get_experiment_by_name(good.experiment_name) is not None:
        runs = mlflow_runs(good, f"tags.`{KIND_TAG}` = 'search'")
        assert all(r.info.status in ("KILLED", "FINISHED") for r in runs), [r.info.status for r in runs]
