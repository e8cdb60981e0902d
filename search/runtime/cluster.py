"""Connecting to Ray: a local cluster, or an existing one (``auto``, ``host:port``) that signmix runs on.

From outside the cluster, ``signmix submit`` runs signmix on it as a Ray Job (``search/runtime/jobs.py``);
Ray Client (``ray://``) is refused with a message that says so.

On an existing cluster the workers import signmix's own packages from the copy that Ray's
runtime environment ships from the driver (``py_modules``), so nodes need the third-party
dependencies (torch, adapters, Ray Tune, ...) but no signmix install of their own, and they
always run the driver's version of the code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys

from search.runtime import interrupts
from search.settings.config import Config
from spaces.errors import UsageError

# The top-level packages of the project (pyproject's [tool.setuptools] packages): what a
# worker may import. Not tests/, not the virtual environment.
PACKAGES = ("spaces", "trainables", "search", "mlflow_server")
RUNTIME_ENV_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
# How long a TCP probe of a Ray or database address waits for an answer.
CONNECT_TIMEOUT_S = 3.0
# Ray's own variable naming the cluster to join (`ray.init` reads it); signmix reads it when the
# config names no address (cluster_address).
RAY_ADDRESS_ENV = "RAY_ADDRESS"


def quiet_ray(debug: bool = False) -> None:
    """Keep Ray Tune's own console tables out of signmix's output (our callbacks report
    progress and failures; the full error of a failed trial is in its MLflow run)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not debug:
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://bucket/prefix``, ``gs://...``), not a local folder."""
    return "://" in path


def storage_uri(cfg: Config) -> str:
    """Where Ray Tune keeps the experiments: ``ray.storage_path`` as an absolute local path,
    or the URI unchanged (``s3://bucket/prefix``; absolutising would break it).

    ``search/workflows/mixture_search.py`` passes this to ``tune.RunConfig(storage_path=...)``.
    """
    path = cfg.storage_path
    return path if is_uri(path) else os.path.abspath(path)


def runtime_env_for_packages() -> dict:
    """The runtime environment that ships signmix's packages to every worker of a cluster.

    Each package folder is found without importing it (importing ``trainables`` would
    import torch). Caches and build metadata are excluded from the upload.
    """
    modules = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"cannot find the package {name!r} to ship to the Ray cluster; "
                             "install signmix (`pip install -e .`) in the driver's environment")
        modules.append(os.path.abspath(list(spec.submodule_search_locations)[0]))
    return {"py_modules": modules, "excludes": list(RUNTIME_ENV_EXCLUDES)}


def check_cluster_storage(cfg: Config) -> None:
    """Refuse an object-store ``ray.storage_path`` whose defaults would be local files.

    Ray Tune writes its experiments to any pyarrow URI (``s3://``, ``gs://``), but the
    adapter store and the default MLflow database are plain files derived from the storage
    path; with a URI they must be named explicitly.
    """
    if not is_uri(cfg.storage_path):
        return
    problems = []
    if cfg.store is None:
        problems.append("`store` (the adapter store: a folder every node can read)")
    if cfg.mlflow.tracking_uri is None:
        problems.append("`mlflow.tracking_uri` (e.g. http://mlflow-host:5000 from `signmix server`)")
    if problems:
        raise UsageError(f"ray.storage_path is the URI {cfg.storage_path!r}, so set "
                         f"{' and '.join(problems)} explicitly; only Ray Tune's results go to the URI")


def _connection_hint(address: str, exc: BaseException, source: str = "ray.address") -> str:
    """What to do about a failed ``ray.init(address=...)``, from the error chain."""
    from ray.exceptions import AuthenticationError

    chain, seen = [], exc
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # Ray wraps the GCS client's AuthenticationError into a RuntimeError's text.
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return ("the cluster uses token authentication: set RAY_AUTH_MODE=token and give this machine the "
                "cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
    if source == RAY_ADDRESS_ENV:
        return "start it (`ray start --head`), or unset RAY_ADDRESS for a local cluster of the command's own"
    return "start it (`ray start --head`) or fix ray.address"


def no_idle_workers() -> None:
    """Start a local cluster without its idle worker processes.

    Ray starts one idle Python worker per CPU with a new cluster, for tasks without a runtime
    environment. Every trial of Ray Tune runs in an actor with one of its own (Tune's
    ``env_vars``), which such a worker cannot serve: each idle worker only costs a Python start
    and an import of Ray (about 1.5 s of CPU each, a few seconds of every command on 2 cores).
    A user's own ``RAY_prestart_worker_first_driver`` wins."""
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")


def cluster_address(cfg: Config) -> str | None:
    """The cluster a command joins: ``ray.address`` (or ``--address``), else Ray's own
    ``RAY_ADDRESS`` as ``ray.init`` reads it (a shell on a cluster node, a Ray Job): ``auto`` or
    a GCS ``host:port``. None (or ``local``): a local cluster of the command's own.

    A ``RAY_ADDRESS`` with a scheme is left alone: ``http://HEAD:8265`` is the dashboard that
    ``ray job submit`` talks to (Ray's docs export it so), ``ray://`` a Ray Client; neither is
    a cluster this process can join as a driver."""
    if cfg.ray.address:
        address = cfg.ray.address
    else:
        address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
        address = None if "://" in address else address
    return None if not address or address == "local" else address


def ray_address_source(cfg: Config) -> str:
    """Where :func:`cluster_address` found the address: ``ray.address`` or ``RAY_ADDRESS``."""
    return "ray.address" if cfg.ray.address else RAY_ADDRESS_ENV


def connect_ray(cfg: Config, *, debug: bool = False) -> None:
    """Join the cluster of ``ray.address`` (or ``RAY_ADDRESS``), or start a local one sized by
    ``ray.num_cpus``; then check that one trial's ``resources`` fit on some node of it.

    Raises:
        UsageError: the cluster cannot be reached, or no node can ever run a trial (e.g.
            ``resources.gpu`` > 0 on a cluster without GPUs); raised at once, instead of
            Ray Tune waiting forever for resources that will not come.
    """
    import ray

    quiet_ray(debug)
    check_cluster_storage(cfg)

    address, source = cluster_address(cfg), ray_address_source(cfg)
    if address and address.startswith("ray://"):
        check_ray_address(address, source)  # refuses Ray Client
    started_here = False
    if not ray.is_initialized():
        check_ray_address(address, source)  # ray.init against a dead host:port hangs for minutes
        kwargs = dict(include_dashboard=False, log_to_driver=debug, logging_level=logging.WARNING,
                      configure_logging=True)
        try:
            if address:
                # A Ray Job (`signmix submit`) already ships the packages in its runtime
                # environment, and Ray refuses a second one with the same fields.
                in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
                if source == RAY_ADDRESS_ENV and not in_job:  # never silent: the shell chose the cluster
                    print(f"Ray: joining the cluster in RAY_ADDRESS ({address}); unset RAY_ADDRESS for a local "
                          "cluster of this command's own", file=sys.stderr, flush=True)
                ray.init(address=address, runtime_env=None if in_job else runtime_env_for_packages(), **kwargs)
            else:
                # "local": a new cluster even when `ray start` left an address file behind
                # (address=None would join that cluster, and then refuse num_cpus).
                no_idle_workers()
                ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=None, **kwargs)
        except (ConnectionError, RuntimeError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}; "
                             f"{_connection_hint(address or '', exc, source)}") from None
        started_here = True
        interrupts.stop_on_sigterm()  # ray.init made SIGTERM sys.exit(15): a stopped Ray Job failed the search
    try:
        check_trial_fits(cfg.resources.cpu, cfg.resources.gpu, ray.nodes())
    except UsageError:
        if started_here:
            ray.shutdown()
        raise


def check_trial_fits(cpu: float, gpu: float, nodes: list[dict]) -> None:
    """Raise :class:`UsageError` unless some alive node of ``nodes`` (``ray.nodes()``) has
    ``cpu`` CPUs and ``gpu`` GPUs for one trial."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if gpu > 0 and not any(r.get("GPU", 0) > 0 for r in alive):
        raise UsageError(f"resources.gpu is {gpu} but the Ray cluster has no GPU; "
                         "set resources.gpu: 0 or connect to a cluster with GPUs")
    if not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in alive):
        largest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in alive), default=(0, 0))
        raise UsageError(f"one trial asks for resources {{cpu: {cpu:g}, gpu: {gpu:g}}} but no node of the Ray "
                         f"cluster has that much (the largest has {largest[0]:g} CPUs and {largest[1]:g} GPUs); "
                         "lower resources.cpu / resources.gpu")


def tcp_unreachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port``, or None when something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def check_ray_address(address: str | None, source: str = "ray.address") -> None:
    """An existing cluster's address (``host:port``) must answer; ``ray://`` (Ray Client) is refused.

    ``ray.init`` against a dead ``host:port`` waits for minutes; a TCP connect says the same
    in a few seconds. ``auto`` and ``local`` are left to Ray. ``source`` names where the address
    came from in the messages (``ray.address``, or ``RAY_ADDRESS`` from the environment).
    """
    fix = ("unset RAY_ADDRESS (a local cluster of the command's own) or fix it" if source == RAY_ADDRESS_ENV
           else "fix ray.address / --address")
    if not address or address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        shown = "ray://" + address[len("ray://"):].rpartition("@")[2]  # never a password
        raise UsageError(f"ray.address {shown!r} is a Ray Client address, which signmix does not use: run signmix "
                         "on a node of the cluster with ray.address: auto (or host:6379), or submit it from this "
                         "machine with `signmix submit CONFIG --address http://HEAD:8265` (Ray Jobs)")
    hostport = address
    if "://" in hostport:
        raise UsageError(f"ray.address {address!r} is not a Ray address; use auto or host:port "
                         "(or `signmix submit CONFIG --address http://HEAD:8265` from outside the cluster)")
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"{source} {address!r} has no port; use host:6379 (on a cluster node) or auto, or {fix}")
    reason = tcp_unreachable(host.strip("[]"), int(port))
    if reason:
        raise UsageError(f"cannot connect to the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                         f"({reason}); start it (`ray start --head`) or {fix}")
