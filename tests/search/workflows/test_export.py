"""search/workflows/export.py keeps an error's meaning: "no such run" is the user's, a store that cannot
be read is a runtime failure, and a registered model name MLflow refuses is named (real
SQLite MLflow stores, no mocks)."""

from __future__ import annotations

import sqlite3

import pytest
from tests_support import write_config

from search.settings.config import load_config
from search.workflows.export import export_mixture
from search.tracking.registry import ensure_registered_model
from search.tracking.mlflow_client import RETRY_ENV, make_client
from search.tracking.tracker import open_experiment
from spaces.errors import TrackingError, UsageError


@pytest.fixture
def cfg(tmp_path, demo_domains):
    cfg = load_config(write_config(tmp_path, base_model="unused", domains={"books": demo_domains["books"]},
                                   targets=["books"]))
    open_experiment(cfg.tracking_uri, cfg.experiment_name)  # the store and the experiment exist
    return cfg


def test_an_unknown_run_id_is_a_usage_error_that_keeps_its_cause(cfg, tmp_path):
    with pytest.raises(UsageError, match="no MLflow run '0123456789abcdef'") as raised:
        export_mixture(cfg, tmp_path / "best", run_id="0123456789abcdef")
    assert raised.value.__cause__.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert not (tmp_path / "best").exists()


def test_a_store_that_cannot_be_read_is_a_runtime_failure_not_a_missing_run(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(RETRY_ENV, "0")
    with sqlite3.connect(cfg.tracking_uri[len("sqlite:///"):]) as db:  # the experiments table still answers
        db.execute("ALTER TABLE runs RENAME TO runs_elsewhere")
    with pytest.raises(TrackingError) as raised:
        export_mixture(cfg, tmp_path / "best", run_id="0123456789abcdef")
    assert not isinstance(raised.value, UsageError) and raised.value.exit_code == 1
    assert "no MLflow run" not in str(raised.value)
    assert "no such table: runs" in str(raised.value.__cause__)
    assert not (tmp_path / "best").exists()


def test_a_registered_model_name_mlflow_refuses_is_named_and_nothing_is_registered(tmp_path):
    client = make_client(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_seconds=0)
    client.create_run(client.create_experiment("e"))
    with pytest.raises(UsageError, match="mlflow.registered_model 'team/sentiment' is refused by MLflow") as raised:
        ensure_registered_model(client, "team/sentiment", "d")
    assert raised.value.__cause__.error_code == "INVALID_PARAMETER_VALUE"
    assert client.search_registered_models() == []
    # A name MLflow accepts: created when missing, kept when there (its description too).
    ensure_registered_model(client, "sentiment", "first")
    ensure_registered_model(client, "sentiment", "second")
    assert [(m.name, m.description) for m in client.search_registered_models()] == [("sentiment", "first")]
