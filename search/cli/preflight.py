"""Checks that run before a command starts anything: fail fast, with a message that says
what is wrong and how to fix it, and leave nothing behind.

A problem found here would otherwise surface much later: after a Ray cluster has started,
inside a trial (where the user sees a worker's traceback), or after an MLflow run was
opened and left RUNNING. Nothing here writes a file, opens a run or starts Ray.

``check_before_run(cfg, command=...)`` is what the CLI calls; the smaller checks are
public so that other entry points (the demo) can use them.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path

from mlflow_server.network import check_writable
from mlflow_server.server import check_reachable, redact_uri
from search.runtime.cluster import (
    CONNECT_TIMEOUT_S,
    check_ray_address,
    cluster_address,
    ray_address_source,
    tcp_unreachable,
)
from search.settings.config import Config
from search.workflows.store_imports import check_imports
from spaces.errors import DataError, StoreError, TrackingError, UsageError
from trainables.data import check_labels, load_domain
from trainables.store import AdapterStore

logger = logging.getLogger(__name__)

# Database schemes MLflow accepts as a tracking URI, and their default ports.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_before_run(cfg: Config, *, command: str, out: str | os.PathLike | None = None) -> None:
    """Raise the first problem that would stop ``command`` (train, search, study, fsd, export) later.

    Raises:
        UsageError: a path cannot be written, the base model folder or a stored adapter
            is missing or unusable, a target's data does not fit its stored head, or the
            Ray cluster does not answer.
        TrackingError: the MLflow tracking store cannot be reached.
    """
    if command not in ("train", "search", "study", "fsd", "export"):
        raise ValueError(f"unknown command {command!r}")
    if command == "study":  # a study needs what a search needs
        command = "search"
    local_storage = "://" not in cfg.storage_path
    if command in ("train", "search") and local_storage:
        check_writable(cfg.storage_path, what="ray.storage_path", fix="set ray.storage_path to a writable folder")
    if command == "train":
        check_writable(cfg.store_path, what="the adapter store", fix="set `store` to a writable folder")
        check_base_model(cfg.base_model)

        check_imports(cfg)  # domains.<d>.adapter: files, pickle, base model, architectures
    if command == "fsd":
        target = str(out or os.path.join(cfg.storage_path, "fsd_matrix.csv"))
        if "://" not in target:
            check_writable(Path(target).parent, what="the folder of the FSD table",
                           fix="pass --out with a writable path" if out else "set ray.storage_path to a writable folder")
    if command in ("train", "search", "export"):
        check_tracking_uri(cfg.tracking_uri)
    if command in ("train", "search"):
        check_ray_address(cluster_address(cfg), ray_address_source(cfg))
    if command == "search":
        check_base_model(cfg.base_model)
        check_refit_data(cfg)
        check_store_for_search(cfg)
        check_gate_measures(cfg)


def check_gate_measures(cfg: Config) -> None:
    """The conflict measure the search's gate computes (activation FSD by default) must be one the
    store and the data can give. ``auto`` leaves out what cannot be measured; weight FSD needs no
    more than the store; a search whose mixtures all hold the same members computes none."""
    from search.workflows.conflict_gate import holds_one_member_set

    if cfg.search.gate_on_weight_signs or cfg.search.gate_chooses_measure or holds_one_member_set(cfg):
        return
    from search.workflows.conflict_measures import check_measures

    check_measures(cfg, list(cfg.search.gate_measures))


def check_base_model(base_model: str) -> None:
    """A base model given as a local path must be a folder (hub ids are not checked here)."""
    if os.path.isabs(base_model) and not os.path.isdir(base_model):
        raise UsageError(f"base_model {base_model} is not a folder; set base_model to a local model folder "
                         "or a Hugging Face hub id (e.g. sentence-transformers/all-MiniLM-L6-v2)")


def _scrub(text: str, uri: str) -> str:
    """``text`` without the password of ``uri``."""

    password = urllib.parse.urlsplit(uri).password
    text = text.replace(uri, redact_uri(uri))
    return text.replace(password, "***") if password else text


def check_tracking_uri(uri: str) -> None:
    """Raise unless the MLflow tracking store answers (http), can be created (sqlite, file),
    or its database server answers and its driver is installed (postgresql, mysql, mssql)."""

    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower().split("+", 1)[0]
    if scheme in _DATABASE_PORTS:
        _check_database(uri, scheme)
        return
    probe = uri
    if scheme in ("http", "https") and "@" in parts.netloc:
        # /health needs no credentials; with them in the URL urllib would read them as a host.
        probe = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        check_reachable(probe, timeout=CONNECT_TIMEOUT_S)
    except (UsageError, TrackingError) as exc:
        raise type(exc)(_scrub(str(exc).replace(redact_uri(probe), redact_uri(uri)), uri)) from None


def _check_database(uri: str, scheme: str) -> None:
    import sqlalchemy


    try:
        sqlalchemy.create_engine(uri).dispose()
    except ModuleNotFoundError as exc:
        raise UsageError(f"mlflow.tracking_uri {redact_uri(uri)} needs the database driver {exc.name!r}, which is "
                         f"not installed; `pip install` it, or log through a server (`signmix server`)") from None
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends: a malformed URI
        raise UsageError(f"mlflow.tracking_uri {redact_uri(uri)} is not a valid database URI "
                         f"({_scrub(str(exc).splitlines()[0], uri)}); fix mlflow.tracking_uri") from None
    parts = urllib.parse.urlsplit(uri)
    host, port = parts.hostname, parts.port or _DATABASE_PORTS[scheme]
    if host:
        reason = tcp_unreachable(host, port)
        if reason:
            raise TrackingError(f"the MLflow database at {redact_uri(uri)} cannot be reached ({reason}); "
                                "start it or fix mlflow.tracking_uri")


def check_refit_data(cfg: Config) -> None:
    """With ``search.head: refit``, every target must have a training split to refit its head on."""

    if cfg.search.head != "refit":
        return
    for target in cfg.search.targets:
        try:
            load_domain(target, cfg.domains[target], splits=("train",), max_train_examples=1,
                        seed=cfg.training.seed, trust_remote_code=cfg.trust_remote_code)
        except DataError as exc:
            raise UsageError(f"search.head: got 'refit', which fits each target's head on its training split, "
                             f"but target {target!r} has no usable one ({exc}); allowed: head: own, or give "
                             f"domains.{target} a train split") from exc


def check_store_for_search(cfg: Config) -> None:
    """The stored adapters can be mixed, match the config, and every target's data fits its head.

    A missing adapter is left to the search itself (it says to run ``signmix train``).
    """

    store = AdapterStore(cfg.store_path)
    domains = sorted(cfg.domains)
    if any(d not in store.domains() for d in domains):
        return
    metas = dict(zip(domains, store.check_mixable(domains)))
    first = metas[domains[0]]
    trained = [d for d in domains if not metas[d].get("source")]  # imported ones: compared in check_mixable
    if first.get("base_model") != cfg.base_model:
        raise StoreError(f"the stored adapters were trained on base model {first.get('base_model')!r} but "
                         f"base_model is {cfg.base_model!r}; set base_model back, or retrain them "
                         "(`signmix train CONFIG --force`)")
    if trained and metas[trained[0]].get("adapter") != cfg.adapter.model_dump():
        first = metas[trained[0]]
        raise StoreError(f"the stored adapters were trained with adapter {first.get('adapter')} but the config "
                         f"says {cfg.adapter.model_dump()}; set `adapter` back, or retrain them "
                         "(`signmix train CONFIG --force`)")
    for target in cfg.search.targets:
        store.load_head(target)  # raises StoreError naming a missing or truncated head file
        data = load_domain(target, cfg.domains[target], splits=("validation",),
                           max_eval_examples=cfg.training.max_eval_examples, seed=cfg.training.seed,
                           trust_remote_code=cfg.trust_remote_code)
        check_labels(data, int(metas[target]["num_labels"]))
