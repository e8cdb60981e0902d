"""SQLite stores (MLflow's, Optuna's) run in WAL mode, set through SQLAlchemy's public connect event."""

from __future__ import annotations

import sqlite3

import optuna

from mlflow_server.network import use_wal
from search.proposals.optuna_storage import study_storage
from search.tracking.mlflow_client import make_client


def _journal_mode(db) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_real_mlflow_sqlite_store_is_in_wal_mode(tmp_path):
    db = tmp_path / "mlflow.db"
    client = make_client(f"sqlite:///{db}")
    client.create_experiment("wal")
    assert _journal_mode(db) == "wal"


def test_a_real_optuna_sqlite_study_is_in_wal_mode(tmp_path):
    db = tmp_path / "optuna.db"
    optuna.create_study(storage=study_storage(f"sqlite:///{db}"), study_name="wal").optimize(lambda t: 1.0, n_trials=1)
    assert _journal_mode(db) == "wal"


def test_other_sqlite_databases_are_left_alone(tmp_path):
    from sqlalchemy import create_engine, text

    use_wal(tmp_path / "ours.db")
    other = tmp_path / "other.db"
    with create_engine(f"sqlite:///{other}").connect() as connection:
        connection.execute(text("create table t (x int)"))
        connection.commit()
    assert _journal_mode(other) == "delete"
