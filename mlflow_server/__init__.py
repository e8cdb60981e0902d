"""The MLflow tracking server signmix runs log to: start it, check it, stop it."""

from __future__ import annotations

from mlflow_server.cli import add_server_arguments, run_server
from mlflow_server.server import (
    ServerSettings,
    TrackingServer,
    check_reachable,
    free_port,
    is_loopback,
    redact_uri,
    server_command,
)

__all__ = [
    "ServerSettings",
    "TrackingServer",
    "add_server_arguments",
    "check_reachable",
    "free_port",
    "is_loopback",
    "redact_uri",
    "run_server",
    "server_command",
]
