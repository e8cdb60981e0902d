"""Group searches side by side (search/plan/concurrent_searches.py) on the session's real Ray cluster,
real Optuna and a real MLflow store: what comes back when one of them fails.

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

    cfg = load_config(sys.argv[1])
    good = group_config(cfg, ("books", "movies"))
    bad = updated(group_config(cfg, ("kitchen", "support")), store=sys.argv[2])
    connect_ray(cfg)
    lines = []
    try:
        run_searches([SearchJob("books+movies", good, {"name_suffix": "g1"}),
                      SearchJob("kitchen+support", bad, {"name_suffix": "g2"})], progress=lines.append)
        print(json.dumps({"raised": None}))
    except Exception as exc:
        print(json.dumps({"raised": type(exc).__module__ + "." + type(exc).__name__, "message": str(exc)}))
""")


def test_a_failing_search_raises_its_own_error_and_the_other_is_stopped(tmp_path, tiny_bert, demo_domains,
                                                                        shared_store, ray_cluster):
    from mlflow import MlflowClient

    from search.settings.config import load_config
    from search.tracking.layout import KIND_TAG

    path = write_config(tmp_path, base_model=tiny_bert, domains=dict(demo_domains), targets=None, store=shared_store,
                        search={"strategy": "tpe", "prune_ratios": [0.0, 0.2, 0.4, 0.6, 0.8], "max_concurrent": 1},
                        plan={"mixtures_per_group": 5})
    run = subprocess.run([sys.executable, "-c", DRIVER, str(path), str(tmp_path / "no-store")], capture_output=True,
                         text=True, timeout=600, env=cli_env(), cwd=Path(__file__).resolve().parents[3])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # the search's own error, not Ray's RayTaskError wrapper
    assert result["raised"] == "spaces.errors.StoreError" and "no-store" in result["message"], result
    # the other search was stopped and waited for, not left running: no run of it is still open (it may
    # not have reached MLflow before the failure)
    cfg = load_config(path)
    if MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment_name) is not None:
        runs = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
        assert all(r.info.status in ("KILLED", "FINISHED") for r in runs), [r.info.status for r in runs]
