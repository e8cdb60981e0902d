"""train -> search -> export against a real ``mlflow server`` process, over HTTP only.

The server keeps runs in ``<root>/mlflow.db`` and artifacts in ``<root>/artifacts``; the
tests read everything back through ``MlflowClient(server.url)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_server import ServerSettings, TrackingServer, free_port
from search.settings.config import load_config
from search.tracking.layout import KEY_TAG, KIND_TAG, STATUS_TAG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def over_http(tmp_path_factory, ray_cluster, tiny_bert, demo_domains):
    """A server, and a training + exhaustive search that logged to it; yields (cfg, server, summary)."""
    from tests_support import write_config

    from search.workflows.mixture_search import run_search

    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("over-http")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: unused, slow to start
        server = TrackingServer(settings=ServerSettings(root=str(folder / "server"), port=free_port())).start()
    try:
        domains = {d: demo_domains[d] for d in ("books", "electronics")}
        cfg = load_config(write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"],
                                       mlflow={"tracking_uri": server.url}))
        training = run_training(cfg)
        assert sorted(training.trained) == ["books", "electronics"], training.failed
        summary = run_search(cfg)
        yield cfg, server, summary
    finally:
        server.stop()


@pytest.fixture
def client(over_http):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=over_http[1].url)


def _runs(client, cfg, where: str):
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string=where, max_results=1000)


def test_the_config_points_at_the_server_and_the_runs_live_in_its_root(over_http):
    cfg, server, _ = over_http
    assert cfg.tracking_uri == server.url
    root = server.settings.root_path
    assert (root / "mlflow.db").is_file()
    # Nothing fell back to a local store beside the config.
    assert not (Path(cfg.storage_path) / "mlflow.db").exists()
    assert list((root / "artifacts").rglob("adapter.safetensors"))


def test_training_runs_are_on_the_server(over_http, client):
    cfg, _, _ = over_http
    runs = _runs(client, cfg, f"tags.`{KIND_TAG}` = 'training'")
    assert sorted(r.data.tags["signmix.domain"] for r in runs) == ["books", "electronics"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"train_loss", "val_accuracy"} <= set(run.data.metrics)
        assert "adapter/adapter_config.json" in {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}


def test_search_parent_and_child_runs_are_complete(over_http, client):
    cfg, _, summary = over_http
    (parent,) = _runs(client, cfg, f"tags.`{KIND_TAG}` = 'search'")
    assert parent.info.status == "FINISHED" and parent.info.run_id == summary.parent_run_id
    assert parent.data.metrics["evaluated"] == summary.evaluated
    children = _runs(client, cfg, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # exhaustive over {books}, {books, electronics} x 2 ratios
    assert len(children) == summary.evaluated + summary.filtered_mixtures == 4
    assert summary.evaluated >= 1
    keys = [c.data.tags[KEY_TAG] for c in children]
    assert len(keys) == len(set(keys)), "one run per mixture"
    statuses = {c.data.tags[STATUS_TAG] for c in children}
    assert statuses <= {"evaluated", "filtered"}
    for child in children:
        assert child.data.tags[KIND_TAG] == "mixture" and child.info.status == "FINISHED"
        assert "fsd" in child.data.metrics
        if child.data.tags[STATUS_TAG] == "evaluated":
            assert 0.0 <= child.data.metrics["accuracy_mean"] <= 1.0
            assert {"accuracy/books", "macro_f1/books", "sparsity", "eval_seconds"} <= set(child.data.metrics)
    assert not _runs(client, cfg, "attributes.status = 'RUNNING'")


def test_an_evaluated_mixture_adapter_downloads(over_http, client, tmp_path):
    cfg, _, summary = over_http
    run = client.get_run(summary.best_run_id)
    assert run.data.tags[STATUS_TAG] == "evaluated"
    local = Path(client.download_artifacts(run.info.run_id, "mixture/adapter.safetensors", str(tmp_path)))
    from safetensors.torch import load_file

    weights = load_file(str(local))
    assert weights and all(t.numel() > 0 for t in weights.values())


def test_export_reads_the_server_and_registers_a_version(over_http, client, tmp_path):
    from search.workflows.export import export_mixture

    cfg, _, summary = over_http
    out, record = export_mixture(cfg, tmp_path / "best")
    assert record["mlflow_run_id"] == summary.best_run_id
    assert (out / "adapter.safetensors").is_file() and (out / "heads" / "books").is_dir()
    version = record["registered_model"]["version"]
    assert version >= 1
    mv = client.get_model_version(cfg.registered_model_name, str(version))
    assert mv.run_id == summary.best_run_id
    assert mv.tags["signmix.mixture_key"] == client.get_run(summary.best_run_id).data.tags[KEY_TAG]
