"""How signmix builds its MLflow client: one place, so that riding out a server outage lives here.

A search logs from the driver for as long as it runs; the tracking server may restart in
between. :func:`make_client` returns a :class:`RetryingClient`: each MLflow call signmix
makes is retried while the server is unreachable (connection refused or reset, timeouts,
HTTP 429/502/503/504), with backoff, for up to ``SIGNMIX_MLFLOW_RETRY_SECONDS`` (default
300 s). The driver blocks meanwhile: trials keep running, and their results are logged
once the server is back, so nothing is lost. Past the window the call raises
:class:`~spaces.errors.TrackingError`, which says how to resume.

MLflow retries inside every HTTP request too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default
7 with backoff factor 2: about 4 minutes against a dead server, with a 120 s timeout per
try). Stacked under our loop that would blur the window, so while one of our calls runs,
MLflow makes one try per request with a 30 s timeout, unless the user set those variables.

Calls that create something are made safe to repeat: a retry first looks for what an
earlier try may have created before the answer was lost (same run name, tags and
client-side start time; same experiment or model name; a version of the same run and
source made since the first try). ``log_metric`` gets its timestamp fixed before the first
try, so a repeat is the identical metric, which the store keeps once.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from mlflow_server.network import sqlite_path, use_wal
from mlflow_server.server import redact_uri
from spaces.errors import TrackingError, UsageError

logger = logging.getLogger(__name__)

RETRY_ENV = "SIGNMIX_MLFLOW_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0

#: The MlflowClient methods signmix calls; only these are retried.
RETRIED_CALLS = frozenset({
    "create_run", "update_run", "log_batch", "log_metric", "set_tag", "set_terminated", "log_artifacts", "search_runs",
    "get_run", "get_experiment_by_name", "create_experiment", "restore_experiment", "download_artifacts",
    "list_artifacts", "create_registered_model", "get_registered_model", "create_model_version",
    "set_experiment_tag", "set_registered_model_alias", "update_model_version",
})

# While one of our calls runs (and unless the user set them): one try per request, bounded.
_ONE_TRY_PER_REQUEST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_TRANSIENT_STATUS = {429, 502, 503, 504}
_TRANSIENT_ERROR_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
# MLflow flattens some failures into the message only (artifact downloads run in threads).
_UNREACHABLE_TEXT = re.compile(
    r"Connection refused|Failed to establish a new connection|Connection aborted|Connection reset|"
    r"RemoteDisconnected|Read timed out|Connect timeout|timed out|too many (?:429|502|503|504) error responses",
    re.IGNORECASE)


def retry_seconds_from_env() -> float:
    """The outage window: ``SIGNMIX_MLFLOW_RETRY_SECONDS`` (seconds, >= 0), default 300."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"{RETRY_ENV} must be a number of seconds >= 0, got {raw!r}; e.g. {RETRY_ENV}=300")
    return value


def make_client(tracking_uri: str, *, retry_seconds: float | None = None) -> RetryingClient:
    """The MLflow client every signmix component logs through (see the module docstring).

    Args:
        tracking_uri: the MLflow tracking URI (``http://...``, ``sqlite:///...``, ...).
        retry_seconds: how long a call waits for an unreachable server before it raises
            ``TrackingError``; default ``SIGNMIX_MLFLOW_RETRY_SECONDS`` or 300.
    """
    seconds = retry_seconds_from_env() if retry_seconds is None else float(retry_seconds)
    if not seconds >= 0:
        raise ValueError(f"retry_seconds must be >= 0, got {retry_seconds}")
    return RetryingClient(tracking_uri=tracking_uri, retry_seconds=seconds)


class RetryingClient:
    """An ``MlflowClient`` whose calls in :data:`RETRIED_CALLS` ride out a server outage.

    Any other attribute is the plain client's. Picklable (Ray Tune pickles the searcher and
    callbacks that hold it): only the URI and the window travel; the copy builds its own client.
    """

    def __init__(self, *, tracking_uri: str, retry_seconds: float) -> None:
        from mlflow import MlflowClient

        self.tracking_uri, self.retry_seconds = tracking_uri, retry_seconds
        if sqlite_path(tracking_uri) is not None:
            use_wal(sqlite_path(tracking_uri))  # before the client opens its first connection
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._down_since: float | None = None  # monotonic time of the first failure of this outage
        self._gave_up = False  # the window was exceeded: later calls try once, then raise

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "retry_seconds": self.retry_seconds}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"RetryingClient({_redact(self.tracking_uri)!r}, retry_seconds={self.retry_seconds:g})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (e.g. during unpickling): no recursion into _client
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if name not in RETRIED_CALLS:
            return attribute
        return lambda *args, **kwargs: self._call(name, attribute, args, kwargs)

    # --- calls that create something: look before creating again -----------------------------

    def create_run(self, experiment_id: str, start_time: int | None = None, tags: dict | None = None,
                   run_name: str | None = None):
        """``MlflowClient.create_run``, with a client-side start time that identifies the run."""
        start_time = _now_ms() if start_time is None else start_time
        return self._call("create_run", self._client.create_run, (experiment_id,),
                          {"start_time": start_time, "tags": tags, "run_name": run_name},
                          find_created=lambda: self._find_run(experiment_id, start_time, tags or {}, run_name))

    def _find_run(self, experiment_id: str, start_time: int, tags: dict, run_name: str | None):
        for run in self._client.search_runs([experiment_id], filter_string=f"attributes.start_time = {start_time}",
                                            max_results=1000):
            if (run_name is None or run.info.run_name == run_name) and all(
                    run.data.tags.get(k) == str(v) for k, v in tags.items()):
                return run
        return None

    def create_experiment(self, name: str, *args, **kwargs) -> str:
        def find_created():
            exp = self._client.get_experiment_by_name(name)
            return None if exp is None or exp.lifecycle_stage != "active" else exp.experiment_id

        return self._call("create_experiment", self._client.create_experiment, (name, *args), kwargs,
                          find_created=find_created)

    def create_registered_model(self, name: str, *args, **kwargs):
        def find_created():
            from mlflow.exceptions import MlflowException

            try:
                return self._client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

        return self._call("create_registered_model", self._client.create_registered_model, (name, *args), kwargs,
                          find_created=find_created)

    def create_model_version(self, name: str, source: str, run_id: str | None = None, tags: dict | None = None,
                             **kwargs):
        first_try_ms = _now_ms()

        def find_created():
            if run_id is None or "'" in name:
                return None  # nothing to identify an earlier version by: create again
            for mv in self._client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
                if (mv.source == source and mv.creation_timestamp >= first_try_ms - 5000
                        and all(mv.tags.get(k) == str(v) for k, v in (tags or {}).items())):
                    return mv
            return None

        return self._call("create_model_version", self._client.create_model_version, (name, source),
                          {"run_id": run_id, "tags": tags, **kwargs}, find_created=find_created)

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int | None = None,
                   step: int | None = None, **kwargs):
        """``MlflowClient.log_metric`` with the timestamp fixed before the first try."""
        return self._call("log_metric", self._client.log_metric, (run_id, key, value),
                          {"timestamp": _now_ms() if timestamp is None else timestamp, "step": step, **kwargs})

    # --- the loop -----------------------------------------------------------------------------

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict,
              find_created: Callable[[], Any] | None = None) -> Any:
        delay, failed_before = FIRST_DELAY_S, False
        while True:
            try:
                with _one_try_per_request():
                    found = find_created() if failed_before and find_created is not None else None
                    result = found if found is not None else method(*args, **kwargs)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                failed_before = True
                remaining = self._note_failure(name, exc)
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            if self._down_since is not None:
                logger.info("the MLflow tracking server at %s answers again after %.0f s; logging resumed",
                            _redact(self.tracking_uri), time.monotonic() - self._down_since)
                self._down_since, self._gave_up = None, False
            return result

    def _note_failure(self, name: str, exc: BaseException) -> float:
        """Record one failed try; return how long to wait at most, or raise past the window."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            logger.warning("the MLflow tracking server at %s is unreachable (%s, in %s); retrying for up to "
                           "%g s (%s); signmix waits meanwhile", _redact(self.tracking_uri), _reason(exc), name,
                           self.retry_seconds, RETRY_ENV)
        waited = now - self._down_since
        if self._gave_up or waited >= self.retry_seconds:
            self._gave_up = True
            raise TrackingError(
                f"the MLflow tracking server at {_redact(self.tracking_uri)} has been unreachable for {waited:.0f} s "
                f"({_reason(exc)}); the search stopped; restart the server and run "
                f"`signmix search CONFIG --resume` (set {RETRY_ENV} to wait longer)") from exc
        return self.retry_seconds - waited


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server could not be reached (worth retrying), not a refusal."""
    import requests

    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.exceptions.SSLError):
            return False  # a certificate problem does not go away by waiting
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                              TimeoutError)):
            return True
        if isinstance(error, requests.exceptions.RetryError):  # urllib3 gave up on a status code
            return bool(_UNREACHABLE_TEXT.search(str(error)))
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in _TRANSIENT_STATUS:
            return True
        if getattr(error, "error_code", None) in _TRANSIENT_ERROR_CODES:
            return True
        error = error.__cause__ or error.__context__
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and bool(_UNREACHABLE_TEXT.search(str(exc)))


@contextmanager
def _one_try_per_request() -> Iterator[None]:
    """Set :data:`_ONE_TRY_PER_REQUEST` in the environment (where unset) while any caller is inside.

    Process-wide on purpose: MLflow reads them at request time, also in its download threads.
    """
    global _users
    with _env_lock:
        if _users == 0:
            for key, value in _ONE_TRY_PER_REQUEST.items():
                if key not in os.environ:
                    os.environ[key] = value
                    _env_set_by_us.append(key)
        _users += 1
    try:
        yield
    finally:
        with _env_lock:
            _users -= 1
            if _users == 0:
                for key in _env_set_by_us:
                    os.environ.pop(key, None)
                _env_set_by_us.clear()


_env_lock = threading.Lock()
_users = 0
_env_set_by_us: list[str] = []


def _reason(exc: BaseException) -> str:
    """A few words on why the last try failed, e.g. ``Connection refused``."""
    text = str(exc)
    for pattern in ("Connection refused", "Connection reset", "timed out", _UNREACHABLE_TEXT.pattern):
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return match.group(0)
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _redact(uri: str) -> str:

    return redact_uri(uri)


def _now_ms() -> int:
    return int(time.time() * 1000)
