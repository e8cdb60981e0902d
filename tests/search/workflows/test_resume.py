"""Kill a real `signmix search` process mid-search (SIGKILL), then `--resume` it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests_support import mlflow_runs, run_signmix, write_config

from search.settings.config import load_config
from search.tracking.layout import KEY_TAG, KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration


def _evaluated(cfg) -> int:
    try:
        return len(mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'"))
    except Exception:  # the store is being created by the child process
        return 0


OBJECTIVES = {"accuracy": {}, "accuracy+robust_accuracy": {"objectives": ["accuracy", "robust_accuracy"],
                                                         "fgsm_step": 0.01},
              # each Ray trial a batch of 2 mixtures (search.mixtures_per_trial): killed mid-batch
              "accuracy,batches": {"mixtures_per_trial": 2}}


@pytest.mark.parametrize("objectives", list(OBJECTIVES))
def test_search_killed_mid_way_resumes_to_exactly_the_budget(tmp_path, ray_cluster, tiny_bert, demo_domains,
                                                             shared_store, objectives):
    from search.workflows.adapter_training import run_training

    domains = {d: demo_domains[d] for d in ("books", "movies", "electronics", "kitchen")}
    path = write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
                        search={"strategy": "tpe", "targets": ["books"], "num_mixtures": 9, "max_fsd": None,
                                "prune_ratios": [0.0, 0.5], "max_concurrent": 1, "seed": 3,
                                **OBJECTIVES[objectives]})
    cfg = load_config(path)
    run_training(cfg)

    cmd = [sys.executable, "-m", "search.cli.main", "search", str(path)]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while _evaluated(cfg) < 3:
        assert driver.poll() is None, f"the search ended before it could be killed:\n{driver.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the search made no progress"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started
    driver.wait(timeout=30)
    before = _evaluated(cfg)
    assert 3 <= before < 9

    resumed = run_signmix("search", str(path), "--resume", timeout=600)  # a fresh process, not killed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming search" in resumed.stderr
    # the resumed command joined the session's cluster (tests_support.cli_env), as a command joins RAY_ADDRESS
    assert "Ray: joining the cluster in RAY_ADDRESS" in resumed.stderr

    children = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'mixture'")
    keys = [r.data.tags[KEY_TAG] for r in children]
    assert len(keys) == len(set(keys)), "one MLflow run per mixture"
    evaluated = [r for r in children if r.data.tags[STATUS_TAG] == "evaluated"]
    statuses = sorted(str((r.data.tags[STATUS_TAG], r.data.params.get("members"), r.data.params.get("prune_ratio")))
                      for r in children)
    assert all(r.data.params.get("members") for r in children), f"a run without its parameters: {statuses}"
    assert len(evaluated) == 9, (
        f"exactly the requested number of mixtures, across the crash: {statuses}\n{resumed.stdout[-2000:]}\n"
        f"{resumed.stderr[-3000:]}")
    assert all("accuracy_mean" in r.data.metrics for r in evaluated)
    assert not mlflow_runs(cfg, "attributes.status = 'RUNNING'")
    (parent,) = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["evaluated"] == 9

    # The same Ray Tune experiment, each of its trials a different mixture.
    experiments = list(Path(cfg.storage_path).glob("search-*/"))
    assert len(experiments) == 1
    configs = [json.loads(p.read_text()) for p in experiments[0].glob("*/params.json")]
    trial_keys = [item["mixture_key"] for c in configs for item in c.get("batch", [c])]
    assert len(trial_keys) == len(set(trial_keys))
    # The same Optuna study: one study, every evaluated mixture told to it.
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(Path(cfg.storage_path) / "optuna.journal")))
    (study,) = optuna.get_all_study_summaries(storage)
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Every evaluated mixture told with all its objectives (a list of two with robustness).
    metrics = ["accuracy_mean"] + (["robust_accuracy_mean"] if "robust" in objectives else [])
    assert {tuple(round(v, 6) for v in t.values) for t in complete} >= {
        tuple(round(r.data.metrics[m], 6) for m in metrics) for r in evaluated}
    assert not [t for t in loaded.trials if t.state == optuna.trial.TrialState.RUNNING]
