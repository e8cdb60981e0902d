"""Running signmix on a remote Ray cluster as a Ray Job (``signmix submit``).

The job's runtime environment carries signmix's own packages (``py_modules``, as
:func:`search.runtime.cluster.runtime_env_for_packages` ships them to workers) and a working
directory that holds only the config, as this machine reads it: every relative path in it
(data, store, ``ray.storage_path``, a local ``base_model`` folder) is made absolute here,
and ``ray.address`` becomes ``auto`` (the cluster the job runs in). So the paths of the
config must name the same places on the head: a folder mounted at the same path on every
node (or the same machine). The head needs signmix's third-party dependencies on the
``python`` of its PATH and ``ray[default]`` (the dashboard), as for ``address: auto``.

Ctrl-C while the job's log streams stops the job: nothing that ``signmix submit`` started
keeps running unless it was asked to (``--no-wait``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TextIO

import yaml

from search.runtime.cluster import RUNTIME_ENV_EXCLUDES, runtime_env_for_packages, tcp_unreachable
from search.settings.config import Config
from spaces.errors import SignmixError, UsageError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger(__name__)

# The commands a job may run: they take a config and `--address` (the job joins its cluster).
JOB_COMMANDS = ("search", "train", "study")
CONFIG_NAME = "signmix.yaml"
TOKEN_HINT = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and give this machine the "
              "cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
HTTP_TIMEOUT_S = 5.0
# A stopped job's driver gets SIGTERM and this long to close its search (a KILLED MLflow run that
# `--resume` continues) before Ray kills it (Ray's default: 3 s); the client waits a little longer.
STOP_GRACE_S = 60
STOP_WAIT_S = STOP_GRACE_S + 30.0
LAST_LINES = 20
# What a job's `python` must import (looked up on the head before the job's command runs).
JOB_MODULES = ("ray", "torch", "transformers", "adapters", "datasets", "optuna", "mlflow", "pydantic", "yaml",
               "safetensors", "scipy", "matplotlib")
# `signmix submit --status JOB`: the exit status of each Ray job status.
STATUS_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1, "PENDING": 3, "RUNNING": 3}
GCS_HINT = ("what answers there does not speak HTTP (Ray's GCS port, 6379 by default, answers like this; "
            "the dashboard listens on 8265 by default)")
LOGS_HINT = "the head's session logs (dashboard.log, dashboard_agent.log; /tmp/ray/session_latest/logs by default)"


class JobError(SignmixError):
    """A submitted job failed or was stopped (exit 1); the message holds its last lines."""


class JobsApiError(SignmixError):
    """The head's Ray Jobs API failed a request (exit 1); the message names the cause and what to check."""


@contextmanager
def jobs_api(what: str) -> Iterator[None]:
    """Turns a failure of the Ray Jobs client while doing ``what`` into one :class:`JobsApiError`
    naming Ray's reason and what to check (the traceback only with ``--debug``)."""
    try:
        yield
    except (RuntimeError, OSError) as exc:  # requests' ConnectionError is an OSError
        raise jobs_api_error(what, exc) from exc


def jobs_api_error(what: str, exc: Exception) -> JobsApiError:
    """One message for a failed Ray Jobs request: Ray's reason (its first line, HTTP code
    apart) and what to check."""
    if isinstance(exc, OSError):
        return JobsApiError(f"the head's Ray Jobs API could not {what}: the connection failed "
                            f"({type(exc).__name__}); check that the head is still up (`ray status` on it)")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    code, sep, reason = first.partition(": ")
    if sep and code.startswith("Request failed with status code"):
        first = f"{reason.rstrip('.')} (HTTP {code.rsplit(' ', 1)[-1]})"
    if "No available agent" in first:
        hint = ("the head's dashboard agent is not running: it could not bind its port, or it stopped. Check "
                f"{LOGS_HINT}; restart the head with free ports (`ray start --head --dashboard-agent-listen-port "
                "PORT`)")
    else:
        hint = f"check the head (`ray status` on it) and {LOGS_HINT}"
    return JobsApiError(f"the head's Ray Jobs API could not {what}: {first}; {hint}")


def _readable(exc: BaseException) -> str:
    """A short printable description of a failed HTTP request (never the raw bytes of the reply)."""
    if isinstance(exc, http.client.HTTPException):
        return GCS_HINT
    text = str(getattr(exc, "reason", exc))
    if not text.isprintable() or len(text) > 200:
        return GCS_HINT
    return text


def dashboard_url(address: str) -> str:
    """The Ray dashboard's URL for ``--address`` (``http://HEAD:8265``; a bare ``HEAD:8265``
    gets ``http://``); refuses a Ray Client (``ray://``) or GCS address by name."""
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise UsageError(f"--address {address!r} is a Ray Client address; `signmix submit` talks to the head's "
                         "dashboard: give --address http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    scheme, _, hostport = address.partition("://")
    host, sep, port = hostport.partition("/")[0].rpartition(":")
    if scheme not in ("http", "https") or not sep or not port.isdigit() or not host:
        raise UsageError(f"--address {address!r} is not a Ray dashboard address; use http://HEAD:8265")
    return address


def ray_token_headers() -> dict[str, str]:
    """The Authorization header of a head started with ``RAY_AUTH_MODE=token``, else none.

    The token is read where Ray's token authentication documents it ("Ray token
    authentication", Ray 2.52+): ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``; sent as a bearer token, as Ray's own clients do (Ray's own
    helper for this is private to Ray, and may move without notice).
    """
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_dashboard(url: str) -> str:
    """The Ray version of the dashboard at ``url``; raises :class:`UsageError` at once when
    nothing answers there, when what answers is not a Ray dashboard, or when it needs a token."""
    hostport = url.partition("://")[2].partition("/")[0]
    host, _, port = hostport.rpartition(":")
    reason = tcp_unreachable(host.strip("[]"), int(port))
    if reason:
        raise UsageError(f"cannot reach the Ray dashboard at {url}: nothing answers at {hostport} ({reason}); "
                         "start the head with `ray start --head --dashboard-host 0.0.0.0` or fix --address")
    request = urllib.request.Request(f"{url}/api/version", headers=ray_token_headers())
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403) and b"token" in exc.read(4096).lower():
            raise UsageError(f"the Ray dashboard at {url} refused the request: {TOKEN_HINT}") from None
        raise UsageError(f"{url} is not a Ray dashboard (GET /api/version answered HTTP {exc.code}); "
                         "give the head's dashboard address, e.g. http://HEAD:8265") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise UsageError(f"{url} is not a Ray dashboard ({_readable(exc)}); "
                         "give the head's dashboard address, e.g. http://HEAD:8265") from None
    try:
        version = json.loads(body)["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{url} is not a Ray dashboard (GET /api/version did not answer Ray's version); "
                         "give the head's dashboard address, e.g. http://HEAD:8265") from None
    return str(version)


def connect_jobs(address: str) -> JobSubmissionClient:
    """A Ray Jobs client of the dashboard at ``address``, checked first (:func:`check_dashboard`)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    version = check_dashboard(url)
    import ray

    if version != ray.__version__:
        logger.warning("the cluster runs Ray %s, this machine Ray %s: jobs may fail", version, ray.__version__)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise UsageError(f"the Ray dashboard at {url} refused the request: {TOKEN_HINT}") from None
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"cannot use the Ray Jobs API at {url}: {str(exc).splitlines()[0]}") from None


def job_config(cfg: Config) -> dict:
    """The config as the job reads it: paths absolute as resolved here, ``ray.address: auto``."""
    raw = cfg.model_dump(mode="json")
    raw["ray"] = {**raw["ray"], "address": "auto"}
    return raw


def job_runtime_env(cfg: Config, workdir: str) -> dict:
    """The job's runtime environment: signmix's packages and ``workdir`` holding the config."""
    with open(os.path.join(workdir, CONFIG_NAME), "w", encoding="utf-8") as f:
        yaml.safe_dump(job_config(cfg), f, sort_keys=False)
    env = runtime_env_for_packages()
    # RAY_JOB_STOP_WAIT_TIME_S is read by the job's supervisor, which runs in this environment.
    return {"working_dir": workdir, "py_modules": env["py_modules"], "excludes": list(RUNTIME_ENV_EXCLUDES),
            "env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}}


def job_entrypoint(command: str, extra_args: list[str] | None = None) -> str:
    """The job's shell command: first the check that the head's ``python`` has signmix's
    dependencies (one line and exit 2 when not), then ``signmix COMMAND``."""
    check = shlex.join(["python", "-m", "search.cli.head_python", *JOB_MODULES])
    return f"{check} && " + shlex.join(["python", "-m", "search.cli.main", command, CONFIG_NAME, *(extra_args or [])])


def submit_job(client: JobSubmissionClient, cfg: Config, *, command: str = "search",
               extra_args: list[str] | None = None) -> str:
    """Submit ``signmix COMMAND`` over ``cfg`` as a Ray Job; returns its submission id."""
    if command not in JOB_COMMANDS:
        raise UsageError(f"--command {command!r} cannot run as a job; choose one of {list(JOB_COMMANDS)}")
    with tempfile.TemporaryDirectory(prefix="signmix-job-") as workdir, jobs_api("submit the job"):
        # The working directory is uploaded by submit_job itself: it may go once we return.
        runtime_env = job_runtime_env(cfg, workdir)
        return client.submit_job(entrypoint=job_entrypoint(command, extra_args), runtime_env=runtime_env,
                                 metadata={"signmix.command": command, "signmix.experiment": cfg.experiment_name})


@dataclass
class JobOutcome:
    job_id: str
    status: str
    message: str
    last_lines: list[str]

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def exit_status(self) -> int:
        """0 succeeded, 1 failed or stopped, 3 pending or running (:data:`STATUS_EXIT`)."""
        return STATUS_EXIT.get(self.status, 1)

    def error_line(self) -> str | None:
        """signmix's own one-line error from the job's log, when it wrote one."""
        errors = [line for line in self.last_lines if line.startswith("signmix: error:")]
        return errors[-1] if errors else None


def job_outcome(client: JobSubmissionClient, job_id: str) -> JobOutcome:
    """The status, Ray's message and the last lines of the log of job ``job_id``."""
    info = _job_info(client, job_id)
    with jobs_api(f"read the log of job {job_id}"):
        logs = client.get_job_logs(job_id)
    lines = [line for line in logs.splitlines() if line.strip()][-LAST_LINES:]
    return JobOutcome(job_id=job_id, status=str(info.status.value), message=(info.message or "").strip(),
                      last_lines=lines)


def _job_info(client: JobSubmissionClient, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise UsageError(f"the cluster has no job {job_id!r}; list them with `ray job list`") from None
        raise jobs_api_error(f"read the status of job {job_id}", exc) from exc


def follow_job(client: JobSubmissionClient, job_id: str, out: TextIO = sys.stdout) -> JobOutcome:
    """Stream the job's log to ``out`` until it ends; returns its outcome.

    Ctrl-C stops the job (and waits up to ``STOP_WAIT_S`` for it to stop) before the
    KeyboardInterrupt goes on.
    """
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        with jobs_api(f"stream the log of job {job_id}"):
            asyncio.run(tail())
    except KeyboardInterrupt:
        stop_job(client, job_id)
        raise
    # The log stream ends when the job does; its status may lag by a moment.
    deadline = time.monotonic() + STOP_WAIT_S
    with jobs_api(f"read the status of job {job_id}"):
        while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
    return job_outcome(client, job_id)


def stop_job(client: JobSubmissionClient, job_id: str, wait_s: float = STOP_WAIT_S,
             progress: Callable[[str], None] = logger.info) -> str:
    """Stop job ``job_id`` and wait up to ``wait_s`` for it to end; returns its final status."""
    info = _job_info(client, job_id)
    with jobs_api(f"stop job {job_id}"):
        if not info.status.is_terminal():
            client.stop_job(job_id)
            progress(f"stopping job {job_id} ...")
        deadline = time.monotonic() + wait_s
        status = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get_job_status(job_id)
    return str(status.value)
