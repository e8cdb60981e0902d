"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations


def mlflow_runs(cfg, filter_string: str = ""):
    """Every run of ``cfg``'s experiment that matches ``filter_string``."""
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=10000)
