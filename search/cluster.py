"""Connecting to Ray: a local cluster, or an existing one (``auto``, ``ray://host:port``)."""

from __future__ import annotations

import logging
import os

from search.config import Config
from spaces.errors import UsageError


def quiet_ray(debug: bool = False) -> None:
    """Keep Ray Tune's own console tables out of signmix's output (our callbacks report
    progress and failures; the full error of a failed trial is in its MLflow run)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not debug:
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def connect_ray(cfg: Config, *, debug: bool = False) -> None:
    """Join the cluster of ``ray.address``, or start a local one sized by ``ray.num_cpus``."""
    import ray

    quiet_ray(debug)

    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=debug, logging_level=logging.WARNING,
                  configure_logging=True)
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, **kwargs)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=None, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"cannot connect to the Ray cluster at {cfg.ray.address!r}: {str(exc).splitlines()[0]}; "
                         "start it (`ray start --head`) or fix ray.address") from None
    if cfg.resources.gpu > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        raise UsageError(f"resources.gpu is {cfg.resources.gpu} but the Ray cluster has no GPU; "
                         "set resources.gpu: 0 or connect to a cluster with GPUs")
