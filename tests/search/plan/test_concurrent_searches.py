"""Group searches side by side (search/plan/concurrent_searches.py) on the session's real Ray cluster,
real Optuna and a real MLflow store: each evaluates its own adapters, and what comes back when one of them
fails.

The searches run from a driver process of their own, as a `signmix plan` joins a cluster: a task that
is cancelled mid-import leaves its worker's modules half imported, and Ray reuses a worker only within
its job, so this test's cancelled worker must not be one that later tests of this process run on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests_support import cli_env, mlflow_runs, write_config

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent("""
    import json, sys
    from search.plan.bodies import group_config
    from search.plan.concurrent_searches import SearchJob, run_searches
    from search.runtime.cluster import connect_ray
    from search.settings.config import load_config, updated
    from search.tracking.tracker import open_config_experiment

    cfg = load_config(sys.argv[1])
    open_config_experiment(cfg)  # as a plan opens its experiment (its own run) before its group searches
    first = group_config(cfg, ("books", "movies"))
    second = group_config(cfg, ("kitchen", "support"))
    if sys.argv[2] != "-":
        second = updated(second, store=sys.argv[2])  # a store that does not exist: that search fails
    connect_ray(cfg)
    lines = []
    try:
        summaries = run_searches([SearchJob("books+movies", first, {"name_suffix": "g1"}),
                                  SearchJob("kitchen+support", second, {"name_suffix": "g2"})], progress=lines.append)
        print(json.dumps({"raised": None, "failed": [s.failed for s in summaries],
                          "evaluated": [s.evaluated for s in summaries], "best": [s.best_run_id for s in summaries]}))
    except Exception as exc:
        print(json.dumps({"raised": type(exc).__module__ + "." + type(exc).__name__, "message": str(exc)}))
""")


def _run_driver(tmp_path, shared_store, tiny_bert, demo_domains, second_store: str, mixtures: int, **search):
    path = write_config(tmp_path, base_model=tiny_bert, domains=dict(demo_domains), targets=None, store=shared_store,
                        search={"strategy": "tpe", "prune_ratios": [0.0, 0.2, 0.4, 0.6, 0.8], "max_concurrent": 1,
                                **search},
                        plan={"mixtures_per_group": mixtures})
    run = subprocess.run([sys.executable, "-c", DRIVER, str(path), second_store], capture_output=True,
                         text=True, timeout=600, env=cli_env(), cwd=Path(__file__).resolve().parents[3])
    assert run.returncode == 0, run.stderr[-3000:]
    return path, json.loads(run.stdout.strip().splitlines()[-1])


def test_searches_side_by_side_each_evaluate_their_own_adapters(tmp_path, tiny_bert, demo_domains, shared_store,
                                                                ray_cluster):
    # Ray Tune registers a fit's trainable by name for the whole Ray job: two fits of one job under one
    # name, and the trials of one started with the other's adapters (KeyError: 'movies' in every trial
    # of kitchen+support, so "no mixture could be evaluated")
    from search.settings.config import load_config
    from search.tracking.layout import KIND_TAG

    # a plan's settings: TIES (the drivers rebuild the adapters' shared initialisation first) and the greedy start
    path, result = _run_driver(tmp_path, shared_store, tiny_bert, demo_domains, "-", mixtures=2,
                               merge_methods=["ties", "average"], densities=[0.5], lambdas=[1.0], prune_ratios=[0.0],
                               warm_start="greedy_fsd")
    assert result["raised"] is None, result
    assert result["failed"] == [0, 0] and result["evaluated"] == [2, 2], result  # each group's whole space
    runs = mlflow_runs(load_config(path), f"tags.`{KIND_TAG}` = 'mixture'")
    assert {r.info.run_id for r in runs} >= set(result["best"])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


def test_searches_side_by_side_without_distinct_names_are_refused_before_anything_starts():
    from search.plan.concurrent_searches import SearchJob, run_searches

    jobs = [SearchJob(name, cfg=None, options={"name_suffix": "g1"}) for name in ("a", "b")]
    with pytest.raises(ValueError, match="distinct name_suffix"):
        run_searches(jobs)


def test_a_failing_search_raises_its_own_error_and_the_other_is_stopped(tmp_path, tiny_bert, demo_domains,
                                                                        shared_store, ray_cluster):
    from mlflow import MlflowClient

    from search.settings.config import load_config
    from search.tracking.layout import KIND_TAG

    path, result = _run_driver(tmp_path, shared_store, tiny_bert, demo_domains, str(tmp_path / "no-store"),
                               mixtures=5)
    # the search's own error, not Ray's RayTaskError wrapper
    assert result["raised"] == "spaces.errors.StoreError" and "no-store" in result["message"], result
    # the other search was stopped and waited for, not left running: no run of it is still open (it may
    # not have reached MLflow before the failure)
    cfg = load_config(path)
    if MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment_name) is not None:
        runs = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
        assert all(r.info.status in ("KILLED", "FINISHED") for r in runs), [r.info.status for r in runs]
