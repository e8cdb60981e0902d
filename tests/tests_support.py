"""Small helpers shared by tests (not fixtures): the one module tests import helpers from."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# The real Amazon multi-domain data (benchmarks and README-flow tests only; never copied).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon_multidomain"


# The conflict measure of test searches that do not test it: weight FSD needs no probe pass
# (the product's default, activation FSD, runs one Ray trial per adapter first). Tests of the
# default leave it out (``write_config(..., default_conflict_measure=True)``).
CHEAP_CONFLICT_MEASURE = {"conflict_measure": "weight_fsd"}


def write_config(folder: Path, *, base_model: str, domains: dict[str, Path], targets: list[str] | None,
                 default_conflict_measure: bool = False, **overrides) -> Path:
    """Write a signmix YAML config into ``folder``; ``overrides`` replace whole sections.

    The search averages (``merge_methods: [average]``), the operator the tests of subsets,
    pruning and the pre-filter were written for, and gates on weight FSD
    (:data:`CHEAP_CONFLICT_MEASURE`) unless ``default_conflict_measure``; tests of the operators
    and of the product's defaults say what they want. ``targets=None`` leaves the targets out
    (serving: every domain)."""
    config = {
        "name": "test-exp",
        "base_model": base_model,
        "adapter": {"method": "seq_bn", "reduction_factor": 4},
        "training": {"epochs": 1, "learning_rate": 5e-3, "batch_size": 16, "max_length": 32, "seed": 0},
        "domains": {name: {"path": str(p)} for name, p in domains.items()},
        "search": {"strategy": "exhaustive", "num_mixtures": 20, "prune_ratios": [0.0, 0.5],
                   "max_fsd": "auto", "max_concurrent": 1, "merge_methods": ["average"],
                   "confirm": False,  # tests of the test-split confirmation turn it on
                   **({} if default_conflict_measure else CHEAP_CONFLICT_MEASURE),
                   **({} if targets is None else {"targets": targets})},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(folder / "runs")},
        "store": str(folder / "adapters"),
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    path = folder / "signmix.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def mlflow_runs(cfg, filter_string: str = ""):
    """Every run of ``cfg``'s experiment that matches ``filter_string``."""
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=10000)


def two_layer_adapters(seed: int = 0) -> dict:
    """Three adapters (a, b, c) of two random 4x6 layers each, named as ``adapters`` names them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {d: {f"bert.encoder.layer.{i}.output.adapters.signmix.adapter_down.0.weight": torch.randn(4, 6, generator=gen)
                for i in range(2)} for d in ("a", "b", "c")}


def make_experiment(base_model: str, store, *, seed: int = 0, reduction_factor: int = 4, targets=("books",),
                    gpu: float = 0.0, domains: dict | None = None, dtype: str = "float32"):
    """A trial's :class:`~trainables.settings.Experiment` with the config's defaults but these."""
    from trainables.settings import (
        AdapterConfig,
        DomainConfig,
        EvaluationSettings,
        Experiment,
        ResourcesConfig,
        TrainingConfig,
    )

    return Experiment(
        base_model=base_model, trust_remote_code=False, store=str(store),
        adapter=AdapterConfig(method="seq_bn", reduction_factor=reduction_factor), training=TrainingConfig(seed=seed),
        domains={d: DomainConfig(path=str(p)) for d, p in (domains or {}).items()},
        resources=ResourcesConfig(cpu=1, gpu=gpu),
        evaluation=EvaluationSettings(targets=tuple(targets), batch_size=64, dtype=dtype, chunks=1, fgsm_step=None,
                                      lora_merge="delta_svd"))


def interruptible() -> None:
    """``preexec_fn`` of a child that a test interrupts with SIGINT: SIGINT handled as a terminal's
    Ctrl-C is, whatever the test run inherited (a shell without job control starts background
    commands with SIGINT ignored, and a child would inherit that and never see the signal)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- the `signmix` command, run as a user runs it, without paying its imports every time -----------

# What every `signmix` command imports before it can say anything: imported once into a fork server.
# Not `datasets`: it reads HF_DATASETS_DISABLE_PROGRESS_BARS when imported, which the command sets first.
_CLI_PRELOAD = ["search.cli.main", "torch", "transformers", "adapters", "mlflow", "optuna", "ray", "ray.tune",
                "pydantic", "yaml"]
_cli_context = None


def _cli_child(argv: list[str], cwd: str, env: dict[str, str], out_path: str, err_path: str) -> None:
    """Run ``signmix *argv`` in this forked process as its own command: the caller's folder and
    environment, its stdout and stderr in files, its exit status the process's, its exit handlers
    (Ray's shutdown) run."""
    import atexit
    import sys

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    from search.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    finally:
        atexit._run_exitfuncs()  # a multiprocessing child skips them; Ray's shutdown is one
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code or 0)


def session_ray():
    """The session's real local Ray cluster (2 CPUs, no GPU), started in this process the first
    time it is asked for; the ``ray`` module."""
    import ray

    from search.runtime.cluster import no_idle_workers, quiet_ray

    if not ray.is_initialized():
        quiet_ray()
        no_idle_workers()  # as `signmix` starts its local clusters
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    return ray


def cli_env() -> dict[str, str]:
    """The environment of a `signmix` command a test starts: this one, and ``RAY_ADDRESS`` naming
    the session's cluster, which the command joins as a user's command joins the cluster of its
    shell (about 1 s, against about 5 s and seven processes to start a cluster of its own on 2
    cores). Its trials run in workers that the session's cluster started, with the session's
    environment; a command whose workers must see an environment of the test's, or that sizes its
    own cluster, is started as a subprocess with an environment without ``RAY_ADDRESS``."""
    return {**os.environ, "RAY_ADDRESS": session_ray().get_runtime_context().gcs_address}


def run_signmix(*args: str, cwd: Path | None = None, timeout: float = 120):
    """``signmix *args`` in a fresh process, like ``subprocess.run([... "signmix", *args])``: a
    :class:`subprocess.CompletedProcess` with the exit status, stdout and stderr as text.

    The process is forked from a server that imported the command's libraries once (torch,
    transformers, adapters, MLflow, Optuna, Ray: seconds of CPU per command otherwise), so each
    command still starts from a clean process of its own, with its own folder and exit status.
    It joins the session's Ray cluster (:func:`cli_env`). For commands a test
    signals or kills, start a real subprocess instead."""
    import multiprocessing
    import subprocess
    import tempfile

    global _cli_context
    if _cli_context is None:
        _cli_context = multiprocessing.get_context("forkserver")
        _cli_context.set_forkserver_preload(_CLI_PRELOAD)
    with tempfile.TemporaryDirectory(prefix="signmix-cli-") as folder:
        out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        child = _cli_context.Process(target=_cli_child, args=(list(args), str(cwd or os.getcwd()), cli_env(),
                                                                 out_path, err_path))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["signmix", *args], timeout)
        with open(out_path, encoding="utf-8") as out, open(err_path, encoding="utf-8") as err:
            return subprocess.CompletedProcess(["signmix", *args], child.exitcode, out.read(), err.read())
