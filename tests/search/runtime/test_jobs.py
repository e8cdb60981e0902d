"""``signmix submit``: a search submitted as a Ray Job to a real head on this machine.

The head is started like the two-node test's nodes (``test_cluster.py``): ``ray start
--block`` in its own process group, its own ``--temp-dir``, ports and auth token, stopped by
process id (never ``ray stop``). Its dashboard listens on 127.0.0.1 and accepts the jobs.
Every ``signmix submit`` runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from local_nodes import free_ports, kill_processes_with_token, node_args, start_node, stop_node
from tests_support import interruptible, mlflow_runs

from search.settings.config import load_config
from search.runtime.jobs import dashboard_url, job_config
from spaces.errors import UsageError

REPO = Path(__file__).resolve().parents[3]


# --- without a cluster ------------------------------------------------------------------

@pytest.mark.parametrize("given, url", [
    ("http://10.0.0.1:8265", "http://10.0.0.1:8265"),
    ("10.0.0.1:8265/", "http://10.0.0.1:8265"),
    ("https://head.example.org:443", "https://head.example.org:443"),
])
def test_dashboard_addresses_are_normalised(given, url):
    assert dashboard_url(given) == url


@pytest.mark.parametrize("given, message", [
    ("ray://10.0.0.1:10001", "is a Ray Client address"),
    ("http://10.0.0.1", "is not a Ray dashboard address"),
    ("ftp://10.0.0.1:21", "is not a Ray dashboard address"),
])
def test_addresses_that_are_not_a_dashboards_are_refused(given, message):
    with pytest.raises(UsageError, match=message):
        dashboard_url(given)


def test_the_job_reads_the_config_with_absolute_paths_and_joins_its_own_cluster(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "name": "e", "base_model": "m", "domains": {"books": {"path": "data"}}, "search": {"targets": ["books"]},
        "ray": {"address": "10.0.0.1:6379", "storage_path": "runs"}, "store": "adapters"}))
    raw = job_config(load_config(tmp_path / "exp.yaml"))
    assert raw["ray"]["address"] == "auto"
    assert raw["domains"]["books"]["path"] == str(tmp_path / "data")
    assert raw["ray"]["storage_path"] == str(tmp_path / "runs") and raw["store"] == str(tmp_path / "adapters")
    # What the job writes is what this machine validated.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "job.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "elsewhere" / "job.yaml").model_dump() == {
        **load_config(tmp_path / "exp.yaml").model_dump(), "ray": {**raw["ray"]}}


# --- a real head with a dashboard -----------------------------------------------------------

@contextmanager
def ray_head(*, python_dir: Path | None = None, busy_agent_port: bool = False) -> Iterator[dict]:
    """A one-node cluster (2 CPUs) whose dashboard accepts jobs; stopped by process id.

    Args:
        python_dir: first on the head's PATH (the job's `python`); default this environment's.
        busy_agent_port: the dashboard agent's port is taken, as by another program: the head
            starts, but its Jobs API has no agent to run jobs.
    """
    root = Path(tempfile.mkdtemp(prefix="smjob-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # The job's entrypoint runs `python` from the head's PATH.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{python_dir or Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    gcs_port, dashboard_port, *ports = free_ports(2 + 22)
    args = [a for a in node_args(root / "head", ports) if not a.startswith("--num-cpus")]
    blocker = socket.socket()
    if busy_agent_port:
        blocker.bind(("127.0.0.1", ports[2]))  # node_args' --dashboard-agent-listen-port
        blocker.listen()
    proc = start_node(["--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}", "--num-cpus=2", *args], env, root / "head.log")
    try:
        yield {"url": f"http://127.0.0.1:{dashboard_port}", "gcs": f"127.0.0.1:{gcs_port}", "env": env}
    finally:
        blocker.close()
        stop_node(proc)
        left = kill_processes_with_token(token)  # the job's driver and workers included
        shutil.rmtree(root, ignore_errors=True)
    assert not left, "processes of the head were left running"


@pytest.fixture(scope="module")
def head():
    with ray_head() as started:
        yield started


def _submit(head, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli.main", "submit", *map(str, args)], cwd=REPO,
                          env=env or head["env"], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def job_config_file(tmp_path_factory, tiny_bert, demo_domains, shared_store):
    from conftest import write_config

    folder = tmp_path_factory.mktemp("job")
    return write_config(folder, base_model=tiny_bert, domains={d: demo_domains[d] for d in ("books", "kitchen")},
                        targets=["books"], store=shared_store,
                        search={"strategy": "exhaustive", "max_fsd": None, "num_mixtures": 3, "max_concurrent": 1},
                        mlflow={"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"})


@pytest.fixture(scope="module")
def submitted(head, job_config_file):
    started = time.monotonic()
    run = _submit(head, job_config_file, "--address", head["url"])
    return run, time.monotonic() - started


@pytest.mark.integration
def test_a_submitted_search_streams_its_log_exits_0_and_its_runs_land_in_mlflow(submitted, job_config_file):
    run, _ = submitted
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # The job's own output, streamed: the search's summary line, then ours.
    assert "exhaustive: 3 evaluated" in run.stdout
    cfg = load_config(job_config_file)
    assert "the job reads these paths on the head, which must have them: data " in run.stderr
    assert f"store {cfg.store_path}; ray.storage_path {cfg.storage_path}" in run.stderr
    assert "succeeded" in run.stdout.splitlines()[-1]
    cfg = load_config(job_config_file)
    evaluated = [r for r in mlflow_runs(cfg) if "accuracy_mean" in r.data.metrics and r.info.status == "FINISHED"]
    assert len({r.data.tags.get("mlflow.runName") for r in evaluated}) == 3


@pytest.mark.integration
def test_status_of_a_finished_job_and_stop_of_an_unknown_one(submitted, head):
    run, _ = submitted
    job_id = next(line.split()[2] for line in run.stderr.splitlines() if line.startswith("submitted job"))
    status = _submit(head, "--status", job_id, "--address", head["url"])
    assert status.returncode == 0 and f"job {job_id}: SUCCEEDED" in status.stdout
    unknown = _submit(head, "--stop", "raysubmit_nosuchjob", "--address", head["url"])
    assert unknown.returncode == 2 and "the cluster has no job 'raysubmit_nosuchjob'" in unknown.stderr


@pytest.mark.integration
def test_a_job_that_fails_on_the_head_exits_1_with_its_error(head, job_config_file, tmp_path):
    raw = yaml.safe_load(job_config_file.read_text())
    raw["store"] = str(tmp_path / "no-adapters-here")  # fine here, unusable on the head
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    run = _submit(head, bad, "--address", head["url"])
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    first = run.stderr.split("signmix: error: ", 1)[1].splitlines()[0]
    assert first.startswith("job raysubmit_") and " failed: signmix: error: " in first
    assert "no-adapters-here" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.integration
@pytest.mark.parametrize("address, message", [
    ("gcs", "is not a Ray dashboard"),
    ("dead", "cannot reach the Ray dashboard at http://127.0.0.1:"),
])
def test_an_address_that_is_not_a_dashboard_is_refused_before_anything_is_submitted(head, job_config_file,
                                                                                    address, message):
    url = f"http://{head['gcs']}" if address == "gcs" else f"http://127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    run = _submit(head, job_config_file, "--address", url, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert all(line.isprintable() for line in run.stderr.splitlines()), run.stderr  # never the reply's raw bytes
    if address == "gcs":
        assert "(what answers there does not speak HTTP (Ray's GCS port, 6379 by default" in run.stderr


@pytest.mark.integration
def test_a_cluster_with_token_authentication_needs_the_token(head, job_config_file):
    env = {k: v for k, v in head["env"].items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(job_config_file.parent)  # no ~/.ray/auth_token either
    run = _submit(head, job_config_file, "--address", head["url"], env=env, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "uses token authentication: set RAY_AUTH_MODE=token" in run.stderr


@pytest.mark.integration
def test_ctrl_c_while_streaming_stops_the_job(head, job_config_file, tmp_path):
    raw = yaml.safe_load(job_config_file.read_text())
    raw["search"] = {**raw["search"], "num_mixtures": 50, "prune_ratios": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "search.cli.main", "submit", str(long), "--address", head["url"]],
                            cwd=REPO, env=head["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    job_id = None
    for line in proc.stderr:
        if line.startswith("submitted job"):
            job_id = line.split()[2]
            break
    assert job_id, "no job was submitted"
    for line in proc.stdout:  # the job's log, streamed: wait until its search has an MLflow run
        if "candidate mixtures" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert f"job {job_id} stopped" in err
    status = _submit(head, "--status", job_id, "--address", head["url"])
    assert f"job {job_id}: STOPPED" in status.stdout
    assert status.returncode == 1  # a stopped job, as a failed one
    # The job's driver got SIGTERM: its search is stopped, not failed (`--resume` continues it).
    (parent,) = mlflow_runs(load_config(long), "tags.`signmix.kind` = 'search'")
    assert parent.info.status == "KILLED", status.stdout
    assert "signmix: interrupted: the search stopped" in status.stdout


def _job_log_until(head, job_id: str, text: str, timeout: float = 300) -> None:
    """Waits until the job's whole log (read with Ray's own Jobs client) holds ``text``."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head["url"], headers={"Authorization": f"Bearer {head['env']['RAY_AUTH_TOKEN']}"})
    deadline = time.monotonic() + timeout
    while text not in (log := client.get_job_logs(job_id)):
        assert time.monotonic() < deadline, f"no {text!r} in the job's log:\n{log[-3000:]}"
        time.sleep(1)


@pytest.mark.integration
def test_a_job_stopped_with_stop_is_killed_in_mlflow_and_resume_finishes_it(head, job_config_file, demo_domains,
                                                                            tmp_path):
    raw = yaml.safe_load(job_config_file.read_text())
    # 4 domains (shared_store has them all) and 19 pruning ratios: 152 candidates, long enough to stop.
    raw["domains"] = {d: {"path": str(demo_domains[d])} for d in ("books", "kitchen", "movies", "electronics")}
    raw["search"] = {**raw["search"], "strategy": "tpe", "num_mixtures": 100, "seed": 3,
                     "prune_ratios": [round(0.05 * i, 2) for i in range(19)]}
    raw["ray"] = {**raw["ray"], "storage_path": str(tmp_path / "runs")}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run = _submit(head, path, "--no-wait", "--address", head["url"])
    assert run.returncode == 0, run.stderr[-2000:]
    job_id = run.stdout.split()[2].rstrip(";")
    _job_log_until(head, job_id, "candidate mixtures")  # its search's MLflow run exists
    status = _submit(head, "--status", job_id, "--address", head["url"])
    assert status.returncode == 3 and f"job {job_id}: RUNNING" in status.stdout  # still running: 3
    deadline = time.monotonic() + 300
    while not mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated'"):
        assert time.monotonic() < deadline, "the job's search evaluated nothing"
        time.sleep(1)

    stop = _submit(head, "--stop", job_id, "--address", head["url"])
    assert stop.returncode == 0 and f"job {job_id}: STOPPED" in stop.stdout, stop.stdout + stop.stderr[-2000:]
    (parent,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")
    assert parent.info.status == "KILLED"
    kept = len(mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated'"))
    assert 1 <= kept < 100

    resumed = _submit(head, path, "--resume", "--address", head["url"], timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert f"resuming search {parent.info.run_id}" in resumed.stdout
    (parent,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["evaluated"] == 100


@pytest.mark.integration
def test_a_head_whose_python_lacks_the_dependencies_fails_the_job_at_once_in_one_line(job_config_file, tmp_path):
    other = tmp_path / "bin"
    other.mkdir()
    (other / "python").symlink_to(shutil.which("python3", path="/usr/bin:/bin"))  # the system's, without torch
    with ray_head(python_dir=other) as bare:
        started = time.monotonic()
        run = _submit(bare, job_config_file, "--address", bare["url"])
        took = time.monotonic() - started
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    first = run.stderr.split("signmix: error: ", 1)[1].splitlines()[0]
    assert " failed: signmix: error: the head runs this job with " in first and "which lacks signmix's " \
        "dependencies" in first and "safetensors" in first and "ray start --head" in first, first
    assert "Traceback" not in run.stdout + run.stderr and "ModuleNotFoundError" not in run.stdout
    assert took < 60, f"the job failed after {took:.0f} s"


@pytest.mark.integration
def test_a_jobs_api_error_is_one_message_naming_the_cause(job_config_file):
    with ray_head(busy_agent_port=True) as agentless:
        run = _submit(agentless, job_config_file, "--address", agentless["url"], timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("signmix: error:")]
    assert "the head's Ray Jobs API could not submit the job: No available agent to submit job" in error
    assert "(HTTP 500)" in error and "dashboard_agent.log" in error and "--dashboard-agent-listen-port" in error


def test_relative_data_paths_missing_here_are_refused_before_submitting(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "name": "e", "base_model": "m", "domains": {"books": {"path": "books"}, "dvd": {"path": "data/dvd"},
                                                     "kitchen": {"path": "/mnt/on-the-head/kitchen"}},
        "search": {"targets": ["books"]}}))
    # Nothing listens at this address: the paths are checked before anything is contacted.
    run = subprocess.run([sys.executable, "-m", "search.cli.main", "submit", str(tmp_path / "exp.yaml"),
                          "--address", "http://127.0.0.1:9"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"names paths that do not exist here: domains.dvd.path 'data/dvd' ({tmp_path / 'data' / 'dvd'})" \
        in run.stderr
    assert "domains.books.path" not in run.stderr  # it exists
    assert "kitchen" not in run.stderr  # absolute: may be a mount only the head has
    assert "they must exist there too" in run.stderr and "Traceback" not in run.stderr
