"""Addresses and reachability: loopback checks, free ports, redacted URIs, health checks."""

from __future__ import annotations

import base64
import errno
import http.client
import ipaddress
import logging
import os
import re
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from spaces.errors import TrackingError, UsageError

logger = logging.getLogger(__name__)
_SECRET_QUERY_KEYS = re.compile(r"(?i)([?&][^=&]*(?:password|secret|token)[^=&]*=)[^&]*")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password (and password-like query values) replaced by ``***``.

    ``postgresql://u:secret@h/db`` becomes ``postgresql://u:***@h/db``.
    """
    redacted = _SECRET_QUERY_KEYS.sub(r"\1***", uri)
    try:
        parts = urllib.parse.urlsplit(redacted)
    except ValueError:
        return redacted
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return redacted
    user = userinfo.split(":", 1)[0]
    return redacted.replace(parts.netloc, f"{user}:***@{hostinfo}", 1)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (another process may take it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # uvicorn sets SO_REUSEADDR too, so sockets in TIME_WAIT do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:pw@host/`` -> (``http://host/``, a basic-auth header): urllib would
    otherwise read ``user:pw@host`` as the host name."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def health_error(base_url: str, timeout: float) -> str | None:
    """Return why ``<base_url>/health`` is not OK, or None when it is (credentials in the
    URL are sent as basic auth)."""
    try:
        url, headers = _split_credentials(base_url)
        request = urllib.request.Request(f"{url.rstrip('/')}/health", headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"/health answered HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"/health answered HTTP {error.code}"
    except urllib.error.URLError as error:
        return str(error.reason)
    except (OSError, http.client.HTTPException, ValueError) as error:
        return str(error) or type(error).__name__


def check_reachable(tracking_uri: str, timeout: float = 5) -> None:
    """Check that clients can log to ``tracking_uri``; raise an error that says how to fix it.

    http(s) URIs must answer ``/health``; ``sqlite:`` and ``file:`` stores need a folder that
    exists (or can be created) and is writable. Other schemes (e.g. ``postgresql``) are not
    checked here.
    """
    if not tracking_uri.strip():
        raise UsageError("mlflow.tracking_uri is empty; set it to e.g. http://127.0.0.1:5000 or sqlite:///mlflow.db")
    scheme = urllib.parse.urlsplit(tracking_uri).scheme.lower()
    if scheme in ("http", "https"):
        reason = health_error(tracking_uri, timeout)
        if reason is not None:
            raise TrackingError(
                f"the MLflow tracking server at {redact_uri(tracking_uri)} cannot be reached: {reason}; "
                "start it with `signmix server` or fix mlflow.tracking_uri"
            )
    elif scheme == "sqlite":
        db = sqlite_path(tracking_uri)
        if db is not None:
            _check_store_folder(db.parent, tracking_uri)
    elif scheme == "file":
        _check_store_folder(Path(urllib.parse.urlsplit(tracking_uri).path), tracking_uri)
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        _check_store_folder(Path(tracking_uri), tracking_uri)
    else:
        logger.debug("not checking tracking URI %s: scheme %r has no local check", redact_uri(tracking_uri), scheme)


SQLITE_PREFIX = "sqlite:///"


def sqlite_uri(path: str | os.PathLike) -> str:
    """The SQLite URI (MLflow's, Optuna's) of the database file ``path``, made absolute."""
    return SQLITE_PREFIX + Path(os.path.abspath(path)).as_posix()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (query string dropped); None for other URIs
    and for an in-memory database."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    db = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(db).expanduser() if db and db != ":memory:" else None


_WAL_FILES: set[str] = set()  # SQLite files whose connections use_wal has put in WAL mode


def use_wal(db: str | os.PathLike) -> None:
    """Open every later SQLAlchemy connection to the SQLite file ``db`` in WAL mode without a sync per commit.

    With SQLite's default rollback journal every commit syncs the file: the MLflow and Optuna
    stores commit several times per trial, and the syncs were a fifth of a search driver's
    time (BENCHMARKS.md, "Driver scale"). In WAL mode an application crash loses nothing,
    a power loss at most the last commits; readers in other processes (``mlflow server``,
    ``mlflow ui``) keep working on the same machine. Not for a database on a network file
    system, where SQLite's WAL does not work: use a server there.

    Public APIs only: SQLAlchemy's ``connect`` event on the ``Engine`` class (every engine,
    whoever builds it: MLflow's store, Optuna's RDBStorage) applies the pragmas to the
    connections whose main database is one of the files given here; other databases are
    left as they are.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not _WAL_FILES:
        event.listen(Engine, "connect", _wal_pragmas)
    _WAL_FILES.add(os.path.realpath(db))


def _wal_pragmas(dbapi_connection, _record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        files = [row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"]
        if files and files[0] and os.path.realpath(files[0]) in _WAL_FILES:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _check_store_folder(folder: Path, tracking_uri: str) -> None:
    check_writable(folder, what=f"the folder of the MLflow store {redact_uri(tracking_uri)}",
                   fix="fix the permissions or point mlflow.tracking_uri somewhere writable")


def check_writable(path: str | os.PathLike, *, what: str, fix: str) -> None:
    """Raise UsageError unless ``path`` is a writable folder or could be created as one (its
    nearest existing folder is writable). ``what`` names it, ``fix`` says what to do."""
    path = Path(path).expanduser().resolve()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path} cannot be created: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} cannot be written: {existing} is not writable; {fix}")
