"""Start, check and stop a real MLflow tracking server for signmix runs.

The default is a single-user server: SQLite and local artifacts under one ``root`` folder,
bound to 127.0.0.1. Shared servers (PostgreSQL, S3-compatible artifacts, basic auth,
another host) are opt-in through :class:`ServerSettings`; see ``mlflow_server/README.md``.
Every URI that reaches a log line or an error goes through :func:`redact_uri` first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn

from mlflow_server.network import (  # noqa: F401  (re-exported: the server's public helpers)
    check_reachable,
    free_port,
    health_error,
    is_loopback,
    port_in_use,
    redact_uri,
    sqlite_uri,
)
from spaces.errors import TrackingError, UsageError

logger = logging.getLogger(__name__)

BASIC_AUTH_APP = "basic-auth"
LOG_FILE_NAME = "server.log"
_LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ServerSettings:
    """Where an MLflow tracking server keeps its data and how it is reached.

    Args:
        root: folder holding the default SQLite database (``mlflow.db``), the default
            artifacts folder (``artifacts/``), ``server.log`` and, with basic auth,
            ``basic_auth.db``. Created on start.
        host: interface to bind. Loopback by default; anything else opens the server to the
            network and must be asked for.
        port: TCP port to listen on.
        backend_store_uri: SQLAlchemy URI of the run store, e.g.
            ``postgresql://user:pass@host/db``; default ``sqlite:///<root>/mlflow.db``.
        artifacts_destination: where proxied artifacts are stored, e.g. ``s3://bucket/prefix``
            (S3-compatible stores read ``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
            ``AWS_SECRET_ACCESS_KEY`` from the environment); default ``<root>/artifacts``.
        workers: uvicorn worker processes.
        app_name: ``"basic-auth"`` to require a user name and password on every request.
        allowed_hosts: Host headers the server accepts (``--allowed-hosts``); MLflow's
            default (localhost and private IPs) when empty.
        cors_allowed_origins: browser origins allowed to call the API
            (``--cors-allowed-origins``); MLflow's default (localhost origins) when empty.
    """

    root: str
    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    workers: int = 1
    app_name: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not str(self.root).strip():
            raise UsageError("the server root folder is empty; pass --root DIR (e.g. --root ./mlflow_store)")
        if not self.host.strip():
            raise UsageError("the server host is empty; pass --host 127.0.0.1 (or 0.0.0.0 to open it to the network)")
        if not 1 <= self.port <= 65535:
            raise UsageError(f"the server port must be in [1, 65535], got {self.port}; pass e.g. --port 5000")
        if self.workers < 1:
            raise UsageError(f"the server needs at least one worker, got {self.workers}; pass e.g. --workers 1")
        if self.app_name not in (None, BASIC_AUTH_APP):
            raise UsageError(
                f"unknown MLflow server app {self.app_name!r}; the only supported app is {BASIC_AUTH_APP!r}"
            )

    @property
    def root_path(self) -> Path:
        """The root folder as an absolute path."""
        return Path(self.root).expanduser().resolve()

    @property
    def resolved_backend_store_uri(self) -> str:
        """The run store URI the server is started with."""
        if self.backend_store_uri:
            return self.backend_store_uri
        return sqlite_uri(self.root_path / "mlflow.db")

    @property
    def resolved_artifacts_destination(self) -> str:
        """The artifact location the server proxies uploads and downloads to."""
        if self.artifacts_destination:
            return self.artifacts_destination
        return str(self.root_path / "artifacts")

    @property
    def client_host(self) -> str:
        """The address a client on this machine connects to (loopback for a wildcard bind)."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host


def server_command(settings: ServerSettings) -> list[str]:
    """Return the ``mlflow server`` argv for ``settings``, run with this interpreter's MLflow.

    Logs a warning when the server would be reachable from the network without basic auth.
    """
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host,
        "--port", str(settings.port),
        "--workers", str(settings.workers),
        "--backend-store-uri", settings.resolved_backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination", settings.resolved_artifacts_destination,
    ]  # fmt: skip
    if settings.app_name is not None:
        command += ["--app-name", settings.app_name]
    if settings.allowed_hosts:
        command += ["--allowed-hosts", ",".join(settings.allowed_hosts)]
    if settings.cors_allowed_origins:
        command += ["--cors-allowed-origins", ",".join(settings.cors_allowed_origins)]
    if not is_loopback(settings.host) and settings.app_name != BASIC_AUTH_APP:
        logger.warning(
            "the MLflow server binds %s:%d without authentication: anyone who can reach this "
            "machine can read and delete runs; add --basic-auth or bind --host 127.0.0.1",
            settings.host, settings.port,
        )  # fmt: skip
    return command


class TrackingServer:
    """A running ``mlflow server`` process; use as ``with TrackingServer(settings=s) as server:``.

    The process runs in its own process group with the root folder as working directory,
    and writes stdout and stderr to ``<root>/server.log``.
    """

    def __init__(self, *, settings: ServerSettings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def settings(self) -> ServerSettings:
        return self._settings

    @property
    def url(self) -> str:
        """The tracking URI clients on this machine use, e.g. ``http://127.0.0.1:5000``."""
        return f"http://{self._settings.client_host}:{self._settings.port}"

    @property
    def log_path(self) -> Path:
        return self._settings.root_path / LOG_FILE_NAME

    @property
    def pid(self) -> int | None:
        """The server process id (also its process group id) while started, else None."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> TrackingServer:
        """Launch the server and wait until ``/health`` answers; return self."""
        if self.running:
            return self
        self.stop()  # a previous process that died on its own: close its log, reap its group
        settings = self._settings
        root = settings.root_path
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create the server root folder {root}: {error}; pass a writable --root") from error
        self._check_basic_auth_bootstrap(root)
        if port_in_use(settings.host, settings.port):
            raise TrackingError(
                f"port {settings.port} on {settings.host} is already in use, so the MLflow server cannot start; "
                f"choose another with --port (e.g. --port {free_port(settings.host)}) or stop the other server"
            )
        command = server_command(settings)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_offset = self._log.tell()
        logger.debug("starting MLflow server: %s", " ".join(redact_uri(part) for part in command))
        process = self._process = subprocess.Popen(
            command, cwd=root, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches the uvicorn workers too
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._fail(f"the MLflow server exited with code {process.returncode} before it was ready")
            reason = health_error(self.url, timeout=1.0)
            if reason is None and process.poll() is None:
                logger.debug("MLflow server ready at %s (pid %d)", self.url, process.pid)
                return self
            if time.monotonic() > deadline:
                self._fail(f"the MLflow server did not answer {self.url}/health within {timeout:g} s ({reason})")
            time.sleep(0.2)

    def _check_basic_auth_bootstrap(self, root: Path) -> None:
        if self._settings.app_name != BASIC_AUTH_APP:
            return
        if not _module_installed("flask_wtf"):
            raise UsageError(
                "--basic-auth needs the Flask-WTF package, which is not installed in "
                f"{sys.prefix}; install it with `pip install 'mlflow[auth]'` and start again"
            )
        # MLflow ships no default admin password: the first start of the basic-auth app needs one.
        if (root / "basic_auth.db").exists():
            return
        if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
            return
        raise UsageError(
            f"the first start with --basic-auth creates the admin user in {root / 'basic_auth.db'} and needs "
            "its password; export MLFLOW_AUTH_ADMIN_PASSWORD='<a strong password>' (or MLFLOW_AUTH_CONFIG_PATH) "
            "and start again"
        )

    def _fail(self, what: str) -> NoReturn:
        tail = self.log_tail()
        self.stop()
        if "address already in use" in tail.lower():
            fix = f"port {self._settings.port} is already in use; choose another with --port"
        elif "ModuleNotFoundError" in tail or "ImportError" in tail:
            fix = f"install the missing package named in the log into {sys.prefix}"
        else:
            fix = (
                f"if port {self._settings.port} is in use choose another with --port; otherwise check the "
                "backend store URI and artifacts destination named in the log"
            )
        raise TrackingError(f"{what}. Last lines of {self.log_path}:\n{tail}\nFix: {fix}")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this server wrote to its log (earlier starts excluded)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"
        return "\n".join(redact_uri(line) for line in text.splitlines()[-lines:])

    def stop(self, grace: float = 10) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            group = process.pid
            _signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if process.poll() is not None and not _group_alive(group):
                    break
                time.sleep(0.1)
            else:
                logger.warning("MLflow server (pid %d) ignored SIGTERM for %g s; killing it", group, grace)
                _signal_group(group, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TrackingServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``group``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Orphaned zombies stay in the group until PID 1 reaps them, which some containers never
    # do; they hold no port or file, so they do not count.
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False
