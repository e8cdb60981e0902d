"""``signmix server``: run an MLflow tracking server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable

from mlflow_server.server import BASIC_AUTH_APP, ServerSettings, TrackingServer, redact_uri
from spaces.errors import TrackingError

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``signmix server`` options to ``parser``."""
    parser.add_argument(
        "--root", metavar="DIR", default="./mlflow_store",
        help="folder for the SQLite run store, artifacts and server.log (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="interface to bind (default: %(default)s, this machine only; 0.0.0.0 opens it to the network)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--backend-store-uri", metavar="URI", default=None,
        help="run store, e.g. postgresql://user:pass@host/db (default: sqlite:///<root>/mlflow.db)",
    )  # fmt: skip
    parser.add_argument(
        "--artifacts-destination", metavar="URI", default=None,
        help="artifact store, e.g. s3://bucket/prefix (MinIO: set MLFLOW_S3_ENDPOINT_URL); default: <root>/artifacts",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    parser.add_argument(
        "--basic-auth", action="store_true",
        help="require a user name and password (MLflow basic-auth app); first start: MLFLOW_AUTH_ADMIN_PASSWORD",
    )  # fmt: skip
    parser.add_argument(
        "--allowed-hosts", metavar="LIST", type=_comma_list, default=(),
        help="comma-separated Host headers to accept when serving beyond localhost (default: MLflow's)",
    )  # fmt: skip
    parser.add_argument(
        "--cors-allowed-origins", metavar="LIST", type=_comma_list, default=(),
        help="comma-separated browser origins allowed to call the API (default: MLflow's, localhost only)",
    )  # fmt: skip
    parser.add_argument(
        "--start-timeout", type=float, default=60.0,
        help="seconds to wait for the server to answer (default: %(default)s)",
    )  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Build the server settings from parsed ``signmix server`` options."""
    return ServerSettings(
        root=args.root,
        host=args.host,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        workers=args.workers,
        app_name=BASIC_AUTH_APP if args.basic_auth else None,
        allowed_hosts=tuple(getattr(args, "allowed_hosts", ())),
        cors_allowed_origins=tuple(getattr(args, "cors_allowed_origins", ())),
    )


def run_server(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C or SIGTERM, then stop it and return 0.

    Raises TrackingError when the server cannot start or dies while running.
    """
    settings = settings_from_args(args)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = _install_handlers(request_stop)
    try:
        with TrackingServer(settings=settings).start(timeout=getattr(args, "start_timeout", 60.0)) as server:
            logger.info(
                "MLflow tracking server at %s (runs: %s, artifacts: %s, log: %s); press Ctrl-C to stop",
                redact_uri(server.url),
                redact_uri(settings.resolved_backend_store_uri),
                redact_uri(settings.resolved_artifacts_destination),
                server.log_path,
            )
            while not stop_requested.wait(_POLL_SECONDS):
                if not server.running:
                    raise TrackingError(
                        f"the MLflow server at {server.url} stopped on its own. Last lines of "
                        f"{server.log_path}:\n{server.log_tail()}\nFix: read the log above, then start it again"
                    )
    finally:
        _restore_handlers(previous)
    return 0


def _install_handlers(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Route SIGINT and SIGTERM to ``handler``; return the handlers to restore."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals only reach the main thread; the caller stops us otherwise
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
