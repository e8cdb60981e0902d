"""Trials that fail for real: a worker process killed mid-search, a mixture that keeps failing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from tests_support import mlflow_runs, write_config

from search.settings.config import load_config
from search.tracking.layout import KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _trial_workers() -> list[int]:
    """Pids of this test's Ray trial workers: processes titled ray::ImplicitFunc... that
    descend from this pytest process (the session cluster's raylet is its child), so that
    a Ray cluster of another process on the machine is never touched."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != me:
                pid = _parent(pid)
        except (OSError, ValueError):
            continue
        if pid == me:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("moment", ["mid_trial", "between_trials"])
def test_a_killed_worker_is_retried_and_the_search_completes(moment, tmp_path, ray_cluster, tiny_bert, demo_domains,
                                                             shared_store):
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    domains = {d: demo_domains[d] for d in ("books", "movies", "kitchen")}
    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
                                   search={"strategy": "exhaustive", "targets": ["books"], "max_fsd": None,
                                           "prune_ratios": [0.0, 0.5], "max_concurrent": 1, "max_failures": 2}))
    run_training(cfg)
    killed: list[int] = []

    def kill_the_worker():
        # After one mixture is evaluated (the worker holds its model), kill the one trial
        # worker (max_concurrent 1): mid_trial, while a mixture is running on it; between_trials,
        # the moment a mixture's result is recorded, while Ray Tune hands the worker to the
        # next trial (a trial that fails then never started: Tune does not retry it, signmix does).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                done = mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'")
                if moment == "mid_trial":
                    ready = bool(done) and bool(mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'running'"))
                else:
                    ready = len(done) >= 2
            except Exception:
                ready = False
            workers = _trial_workers() if ready else []
            if len(workers) == 1:
                killed.append(workers[0])
                os.kill(workers[0], signal.SIGKILL)
            time.sleep(0.05 if moment == "mid_trial" else 0.01)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    summary = run_search(cfg)
    killer.join(timeout=5)
    assert killed, "no trial worker was found to kill"
    assert summary.evaluated == 8 and summary.failed == 0
    # Ray Tune recorded the failure and retried the trial.
    (state_file,) = Path(cfg.storage_path).glob("search-*/experiment_state-*.json")
    trials = json.loads(state_file.read_text())["trial_data"]
    failures = [json.loads(runtime)["num_failures"] for _, runtime in trials]
    assert sum(failures) >= 1
    assert not mlflow_runs(cfg, "attributes.status = 'RUNNING'")


def test_a_mixture_that_keeps_failing_is_recorded_as_failed_with_its_error(tmp_path, ray_cluster, tiny_bert,
                                                                             demo_domains):
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    domains = {d: Path(shutil.copytree(demo_domains[d], tmp_path / "data" / d)) for d in ("books", "movies")}
    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
                                   search={"strategy": "exhaustive", "targets": ["books"], "max_fsd": None,
                                           "prune_ratios": [0.0], "max_concurrent": 1, "max_failures": 1}))
    run_training(cfg)
    # Every evaluation of a books mixture now fails inside its trial: the driver reads the
    # adapters (and the validation sets, which a missing file would stop before any trial) but
    # only a trial loads the target's head.
    from trainables.store import HEAD_FILE

    (Path(cfg.store_path) / "books" / HEAD_FILE).unlink()

    summary = run_search(cfg)
    assert summary.failed == 2 and summary.evaluated == 0
    children = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture'")
    assert len(children) == 2
    for run in children:
        assert run.data.tags[STATUS_TAG] == "failed" and run.info.status == "FAILED"
        assert HEAD_FILE in run.data.tags["signmix.error"] or "head" in run.data.tags["signmix.error"]
    (parent,) = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["failed"] == 2

    # A target's validation file gone after training stops the next search before it starts,
    # naming the file, with no search run left behind.
    from spaces.errors import DataError

    (domains["books"] / "validation.jsonl").unlink()
    with pytest.raises(DataError, match="domain 'books', split 'validation'"):
        run_search(cfg)
    assert len(mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")) == 1
