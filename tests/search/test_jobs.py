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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_cluster import _free_ports, _node_args, _processes_with_token, _start_node, _stop_node
from tests_support import mlflow_runs

from search.config import load_config
from search.jobs import dashboard_url, job_config
from spaces.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


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

@pytest.fixture(scope="module")
def head():
    """A one-node cluster (2 CPUs) whose dashboard accepts jobs; stopped by process id."""
    root = Path(tempfile.mkdtemp(prefix="smjob-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # The job's entrypoint runs `python` from the head's PATH: this environment's.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    gcs_port, dashboard_port, *ports = _free_ports(2 + 22)
    args = [a for a in _node_args(root / "head", ports) if not a.startswith("--num-cpus")]
    proc = _start_node(["--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}", "--num-cpus=2", *args], env, root / "head.log")
    try:
        yield {"url": f"http://127.0.0.1:{dashboard_port}", "gcs": f"127.0.0.1:{gcs_port}", "env": env}
    finally:
        _stop_node(proc)
        for pid in _processes_with_token(token):  # the job's driver and workers included
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)
    assert not _processes_with_token(token), "processes of the head were left running"


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
    url = f"http://{head['gcs']}" if address == "gcs" else f"http://127.0.0.1:{_free_ports(1)[0]}"
    started = time.monotonic()
    run = _submit(head, job_config_file, "--address", url, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 30


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
                            cwd=REPO, env=head["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = None
    for line in proc.stderr:
        if line.startswith("submitted job"):
            job_id = line.split()[2]
            break
    assert job_id, "no job was submitted"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert f"job {job_id} stopped" in err
    status = _submit(head, "--status", job_id, "--address", head["url"])
    assert f"job {job_id}: STOPPED" in status.stdout
