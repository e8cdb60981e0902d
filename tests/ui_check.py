"""`make ui-check`: the MLflow UI on a signmix store, as a user's browser shows it (not part of `make test`).

Starts `mlflow server` on 127.0.0.1 over a store (default: the demo's, `make demo`), opens the
experiment that holds a serving plan in Debian's headless Chromium (`apt-get install chromium`)
and checks, in the DOM after the page's scripts ran:

1. the experiment's link as the README gives it (``#/experiments/<id>?workflowType=machine_learning``)
   opens on the runs table, listing the plan run. MLflow 3.17's UI takes the view of an experiment
   from that URL parameter (or the browser's last choice), not from the experiment's
   ``mlflow.experimentKind`` tag, which signmix sets all the same: the plain ``#/experiments/<id>``
   landing is reported, not checked;
2. the plan's group searches are not loose top-level rows: the plan run's row can be unfolded;
3. a group search's page names the plan run as its parent.

Exit 0 when every check holds; 1 with the failed checks and where the DOM was saved.

    python tests/ui_check.py --store demo_out/mlflow.db
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no headless Chromium found: install it with `apt-get install -y chromium` (Debian)")


def dump_dom(url: str, work: Path, name: str, budget_ms: int) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time, from a fresh browser profile."""
    profile = Path(tempfile.mkdtemp(prefix=f"profile-{name}-", dir=work))
    done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--virtual-time-budget={budget_ms}", "--window-size=1600,1200", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    (work / f"{name}.html").write_text(done.stdout, encoding="utf-8")
    return done.stdout


def wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow server did not answer at {url} within {seconds:.0f} s")


def plan_tree(uri: str):
    """(experiment, newest plan run, its group searches) of the store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for exp in client.search_experiments():
        plans = client.search_runs([exp.experiment_id], "tags.`signmix.kind` = 'plan'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if plans:
            groups = client.search_runs([exp.experiment_id], f"tags.`signmix.plan_run_id` = '{plans[0].info.run_id}'")
            return exp, plans[0], groups
    raise SystemExit(f"no experiment of {uri} holds a serving plan: run `make demo` first")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="demo_out/mlflow.db", help="the SQLite store (default: the demo's)")
    parser.add_argument("--work", default=None, help="where the DOM dumps go (default: a temporary folder)")
    parser.add_argument("--budget-ms", type=int, default=30000, help="virtual time for the page's scripts")
    args = parser.parse_args(argv)
    store = Path(args.store).resolve()
    if not store.is_file():
        raise SystemExit(f"{store} does not exist: run `make demo` first, or give --store")
    work = Path(args.work or tempfile.mkdtemp(prefix="signmix-ui-check-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store}"
    exp, plan, groups = plan_tree(uri)
    port = free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    failures = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", server)
        plain = re.search(r"<title>([^<]*)</title>",
                          dump_dom(f"{base}/#/experiments/{exp.experiment_id}", work, "experiment", args.budget_ms))
        print(f"note: the plain experiment link opens on {plain.group(1) if plain else 'no page'!r} (its "
              f"mlflow.experimentKind tag: {exp.tags.get('mlflow.experimentKind')!r})")
        opened = dump_dom(f"{base}/#/experiments/{exp.experiment_id}?workflowType=machine_learning", work,
                          "experiment-runs", args.budget_ms)
        title = re.search(r"<title>([^<]*)</title>", opened)
        if not (title and title.group(1).startswith("Runs")):
            failures.append(f"the experiment's link opens on {title.group(1) if title else 'no page'!r}, not on its "
                            "runs table")
        runs_page = dump_dom(f"{base}/#/experiments/{exp.experiment_id}/runs", work, "runs", args.budget_ms)
        names = [g.info.run_name for g in groups]
        row = re.search(rf"<button[^>]*runnamecellrenderer[^>]*>(?:(?!</a>).)*?>{re.escape(plan.info.run_name)}<",
                        runs_page, flags=re.S)
        if plan.info.run_name not in runs_page:
            failures.append(f"the runs table does not list the plan run {plan.info.run_name!r}")
        elif row is None:
            failures.append(f"the plan run's row {plan.info.run_name!r} cannot be unfolded (no nested runs)")
        loose = [n for n in names if f">{n}<" in runs_page]
        if loose:
            failures.append(f"group searches are top-level rows of the runs table: {loose}")
        if groups:
            group = groups[0]
            page = dump_dom(f"{base}/#/experiments/{exp.experiment_id}/runs/{group.info.run_id}", work, "group",
                            args.budget_ms)
            if plan.info.run_name not in page:
                failures.append(f"the group search {group.info.run_name!r} does not name its parent, the plan run")
        else:
            failures.append("the plan run has no group searches")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print(f"{'ui-check failed' if failures else 'ui-check passed'}: experiment {exp.name!r}, plan run "
          f"{plan.info.run_name!r} with {len(groups)} group searches; DOM dumps in {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
