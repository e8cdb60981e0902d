"""How signmix builds its MLflow client (one place, so that retry behaviour lives here)."""

from __future__ import annotations


def make_client(tracking_uri: str):
    """The ``MlflowClient`` every signmix component logs through."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)
