"""Several group searches of a plan at once, each a Ray task that drives its own Ray Tune fit.

Ray Tune runs one searcher per fit, and two fits side by side in one process are not supported
(its signal handling wants the main thread; searcher, scheduler and callbacks are global to a
fit). Each group's search therefore runs in a Ray task of its own
(:func:`search.workflows.mixture_search.run_search_with` in a worker process on the driver's
node), as Ray Tune's docs run Tune in a remote function: the task holds no CPU, its mixture
trials hold them, so the cluster runs the trials of every group side by side, as many as it has
CPUs for, and a larger cluster runs more of them at once. What each search finds does not depend
on that: the trials of one group are proposed by its own searcher, seeded as in ``signmix search``.

The tasks' progress lines come back while they run, each prefixed with its group, through a Ray
queue. Ctrl-C or SIGTERM in the driver cancels the tasks: each search stops as a stopped
``signmix search`` does (its MLflow run KILLED, nothing it evaluated lost), and the plan stops.
A search that fails stops the others and the plan with its own error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from search.runtime import interrupts
from search.settings.config import Config
from spaces.errors import SignmixError

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often the driver prints the lines that came back
STOP_WAIT_S = 120.0  # how long stopped searches get to close their MLflow runs


@dataclass(frozen=True)
class SearchJob:
    """One search to run in a task: its name in progress lines, its config and ``run_search``'s
    other keyword arguments (``first_merges``, ``run_name``, ``tags``, ``name_suffix``)."""

    name: str
    cfg: Config
    options: Mapping = field(default_factory=dict)


def _run(job: SearchJob, put: Callable[[str], None], debug: bool, trial: Callable | None):
    """``job``'s search, its progress lines prefixed with its name."""
    from search.workflows.mixture_search import run_search_with

    return run_search_with(job.cfg, trial=trial, progress=lambda line: put(f"  [{job.name}] {line}"), debug=debug,
                           **dict(job.options))


def _search_task(job: SearchJob, lines, debug: bool, trial: Callable | None):
    return _run(job, lines.put, debug, trial)


def run_searches(jobs: Sequence[SearchJob], *, progress: Callable[[str], None] = logger.info, debug: bool = False,
                 trial: Callable | None = None) -> list:
    """Run ``jobs`` at once on the connected Ray cluster; their ``SearchSummary`` in order. A single
    job runs in this process, as ``signmix search`` does.

    ``trial`` replaces the mixture trial (a benchmark's cheap evaluator: ``run_search_with``)."""
    if len(jobs) <= 1:
        return [_run(job, progress, debug, trial) for job in jobs]
    suffixes = [job.options.get("name_suffix", "") for job in jobs]
    if len(set(suffixes)) < len(jobs):
        # Ray Tune keeps one trainable (with the adapters it carries) per name for the whole Ray job:
        # searches side by side under one name would start their trials with each other's adapters
        raise ValueError(f"searches run side by side need distinct name_suffix options, got {suffixes}")
    import ray
    from ray.exceptions import RayTaskError
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On this node, as one search at a time runs in this process: the paths of the MLflow store,
    # the Optuna journal and Ray Tune's storage resolve as the driver's do; the trials go anywhere.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    lines = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    task = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(_search_task)
    refs = [task.remote(job, lines, debug, trial) for job in jobs]
    results: dict = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            _print_lines(lines, progress)
            for ref in done:
                results[ref] = ray.get(ref)
    except KeyboardInterrupt:
        stopped = _stop(pending, lines, progress)
        raise interrupts.Interrupted(
            f"the plan stopped: {stopped} group search(es) in flight were stopped (their MLflow runs KILLED); the "
            "groups searched before are kept in MLflow, and `signmix plan CONFIG` reuses them") from None
    except RayTaskError as exc:
        _stop(pending, lines, progress)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (SignmixError, KeyboardInterrupt)):
            raise cause from None
        raise
    finally:
        _print_lines(lines, progress)
        lines.shutdown()
    return [results[ref] for ref in refs]


def _print_lines(lines, progress: Callable[[str], None]) -> None:
    count = lines.qsize()
    if count:
        for line in lines.get_nowait_batch(count):
            progress(line)


def _stop(pending: list, lines, progress: Callable[[str], None]) -> int:
    """Cancel the searches still running (each stops as a stopped ``signmix search`` does) and
    wait for them to close their runs; how many there were."""
    import ray

    for ref in pending:
        ray.cancel(ref)
    waiting, deadline = list(pending), time.monotonic() + STOP_WAIT_S
    while waiting and time.monotonic() < deadline:
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S)
        _print_lines(lines, progress)
    return len(pending)
