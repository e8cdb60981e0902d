"""``signmix submit``: a search (or training, a study) as a Ray Job on a remote cluster; its status; stopping it."""

from __future__ import annotations

import argparse
import sys

from search.cli.console import load, progress
from search.runtime.interrupts import EXIT_STATUS
from spaces.errors import UsageError


def run_submit(args) -> int:
    """``signmix submit``: one of CONFIG (submit it), ``--status JOB`` or ``--stop JOB``."""
    from search.runtime.jobs import JobError, connect_jobs, follow_job, job_outcome, stop_job, submit_job

    if sum(x is not None for x in (args.config, args.status, args.stop)) != 1:
        raise UsageError("give exactly one of CONFIG (submit it), --status JOB or --stop JOB")
    if args.resume and (args.config is None or args.command != "search"):
        raise UsageError("--resume continues a stopped search: give it with CONFIG and --command search")
    cfg = None
    if args.config:
        from search.runtime.job_paths import check_local_paths, head_paths

        cfg = load(argparse.Namespace(config=args.config))
        check_local_paths(args.config, command=args.command)
    client = connect_jobs(args.address)
    if args.stop:
        print(f"job {args.stop}: {stop_job(client, args.stop, progress=progress)}")
        return 0
    if args.status:
        o = job_outcome(client, args.status)
        print(f"job {o.job_id}: {o.status}" + (f" ({o.message.splitlines()[0]})" if o.message else ""))
        print("\n".join(o.last_lines))
        return o.exit_status  # 0 succeeded, 1 failed or stopped, 3 still pending or running
    progress(f"the job reads these paths on the head, which must have them: {head_paths(cfg)}")
    job_id = submit_job(client, cfg, command=args.command, extra_args=["--resume"] if args.resume else None)
    if args.no_wait:
        print(f"submitted job {job_id}; follow it with `signmix submit --status {job_id} --address {args.address}`")
        return 0
    progress(f"submitted job {job_id} (signmix {args.command}); Ctrl-C stops it")
    try:
        outcome = follow_job(client, job_id)
    except KeyboardInterrupt:
        print(f"signmix: interrupted: job {job_id} stopped", file=sys.stderr)
        return EXIT_STATUS
    if outcome.succeeded:
        print(f"job {job_id} succeeded")
        return 0
    why = outcome.error_line() or (outcome.message.splitlines()[0] if outcome.message else "")
    raise JobError(f"job {job_id} {outcome.status.lower()}: {why}\n  " + "\n  ".join(outcome.last_lines[-10:]))
