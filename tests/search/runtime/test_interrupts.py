"""Ctrl-C and SIGTERM at every stage of a search: real `signmix search` processes, a real Ray
cluster each, real MLflow; the signal is sent the way a terminal or a Ray Job's stop sends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from search.settings.config import load_config
from search.tracking.layout import KIND_TAG, STATUS_TAG
from tests_support import cli_env, interruptible, mlflow_runs, run_signmix, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
STOP_WITHIN_S = 30.0  # Tune stops the trial and saves its state, MLflow is closed: seconds, on a busy 2-core machine

AFTER_A_FIT = """
import sys, time
import torch
from ray import tune
from search.runtime import interrupts
from search.runtime.cluster import connect_ray
from search.settings.config import load_config

cfg = load_config(sys.argv[1])
connect_ray(cfg)
def trial(config):
    tune.report({"x": 1.0})
interrupts.fit(tune.Tuner(trial, run_config=tune.RunConfig(storage_path=cfg.storage_path, verbose=0)))
print("fitted", flush=True)
try:
    # The summary's evaluation of the baselines: torch on the driver's main thread.
    a, deadline = torch.randn(256, 256), time.monotonic() + 120
    while time.monotonic() < deadline:
        a = torch.tanh(a @ a.T / 256)
    print("ran on for 120 s", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


class Lines:
    """The lines a process writes to one stream, read as they come."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._thread.start()

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert proc.poll() is None, f"ended before {text!r}:\n" + "".join(self.lines[-40:])
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n" + "".join(self.lines[-40:])
            time.sleep(0.1)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def _signal_and_wait(proc: subprocess.Popen, signum: int) -> float:
    """Sends ``signum`` to the driver alone; returns the seconds until it exited."""
    sent = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=120)
    return time.monotonic() - sent


@pytest.fixture
def popen():
    """Starts processes as a user would (joining the session's Ray cluster, as a command joins the
    cluster of its shell); any still running at the end is killed by process id."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, preexec_fn=interruptible,
                                        stderr=subprocess.PIPE, text=True, env={**cli_env(), "PYTHONUNBUFFERED": "1"}))
        return started[-1]
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@pytest.fixture
def small_config(tmp_path, tiny_bert, demo_domains, shared_store):
    def write(**search) -> Path:
        domains = {d: demo_domains[d] for d in ("books", "movies", "electronics", "kitchen")}
        return write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], store=shared_store,
                            search={"strategy": "tpe", "num_mixtures": 8, "max_fsd": None, "prune_ratios": [0.0, 0.5],
                                    "max_concurrent": 1, "seed": 3, **search},
                            ray={"storage_path": str(tmp_path / "runs"), "num_cpus": 2})
    return write


def _evaluated(cfg) -> int:
    """Evaluated mixtures in MLflow so far."""
    return len(mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'"))


def _parent(cfg):
    (parent,) = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
    return parent


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_a_tune_fit_interrupts_torch_on_the_main_thread(small_config, popen, signum):
    """The summary stage: Tune left its SIGINT handler installed after the fit (Ctrl-C did nothing
    for 45 s), and Ray's SIGTERM handler sys.exit()ed inside torch (a native abort, exit 134)."""
    script = Path(small_config().parent) / "after_a_fit.py"
    script.write_text(AFTER_A_FIT)
    proc = popen(str(script), str(script.parent / "signmix.yaml"))
    out = Lines(proc.stdout)
    out.wait_for("fitted", proc, timeout=120)
    time.sleep(1.0)
    took = _signal_and_wait(proc, signum)
    err = proc.stderr.read()
    assert proc.returncode == 130 and "interrupted" in out.text(), (proc.returncode, out.text(), err[-3000:])
    assert took < 15, f"the driver took {took:.1f} s to stop"
    assert "Fatal Python error" not in err and "Aborted" not in err


def test_ctrl_c_during_the_search_keeps_its_run_killed_and_resume_finishes_it(small_config, popen):
    path = small_config()
    cfg = load_config(path)
    proc = popen("-m", "search.cli.main", "search", str(path))
    err = Lines(proc.stderr)
    err.wait_for("candidate mixtures", proc)  # the driver made the MLflow store: reading it races nothing now
    deadline = time.monotonic() + 600
    while _evaluated(cfg) < 2:
        assert proc.poll() is None, err.text()[-3000:]
        assert time.monotonic() < deadline, "the search made no progress:\n" + "".join(err.lines[-40:])
        time.sleep(0.3)
    took = _signal_and_wait(proc, signal.SIGINT)
    text = err.text()
    assert proc.returncode == 130, text[-3000:]
    assert took < STOP_WITHIN_S, f"the search took {took:.1f} s to stop"
    parent = _parent(cfg)
    evaluated = len(mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'"))
    assert f"signmix: interrupted: the search stopped: {evaluated} mixture(s) evaluated are kept in MLflow run " \
           f"{parent.info.run_id} (KILLED)" in text and "--resume" in text, text[-3000:]
    assert parent.info.status == "KILLED" and 2 <= evaluated < 8
    assert "Traceback" not in text

    resumed = run_signmix("search", str(path), "--resume", cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parent = _parent(cfg)
    assert parent.info.status == "FINISHED" and parent.data.metrics["evaluated"] == 8
    assert len(mlflow_runs(cfg, f"tags.`{STATUS_TAG}` = 'evaluated'")) == 8


def test_sigterm_during_the_confirmation_keeps_the_finished_search(small_config, popen):
    path = small_config(num_mixtures=3, confirm=True)
    cfg = load_config(path)
    proc = popen("-m", "search.cli.main", "search", str(path))
    err = Lines(proc.stderr)
    err.wait_for("confirming on the test split", proc)
    took = _signal_and_wait(proc, signal.SIGTERM)
    text = err.text()
    assert proc.returncode == 130, text[-3000:]
    assert took < STOP_WITHIN_S, f"the confirmation took {took:.1f} s to stop"
    parent = _parent(cfg)
    assert "its test-split confirmation was stopped: `signmix export CONFIG` confirms" in text, text[-3000:]
    assert parent.info.status == "FINISHED" and parent.data.metrics["evaluated"] == 3
    assert not mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'confirmation'")
    assert "Traceback" not in text and "Fatal Python error" not in text


def test_ctrl_c_during_the_probe_passes_keeps_the_finished_passes(small_config, popen):
    """`signmix fsd --measures activation_fsd` (and every search whose gate needs a probe measure):
    Ctrl-C during the probe passes ended in a raw KeyError traceback ('probe_seconds')."""
    path = small_config(probe_size=24, max_concurrent=1)  # a probe size of its own: nothing cached
    proc = popen("-m", "search.cli.main", "fsd", str(path), "--measures", "activation_fsd")
    err = Lines(proc.stderr)
    err.wait_for("measures: probe passes of", proc)
    time.sleep(2.0)  # inside the passes: Ray starts the first trial
    took = _signal_and_wait(proc, signal.SIGINT)
    text = err.text()
    assert proc.returncode == 130, text[-3000:]
    assert took < STOP_WITHIN_S, f"the probe passes took {took:.1f} s to stop"
    stopped = [line for line in text.splitlines() if line.startswith("signmix: interrupted")]
    assert len(stopped) == 1 and "the probe passes stopped:" in stopped[0] and "run the command again" in stopped[0], \
        text[-3000:]
    assert "Traceback" not in text and "KeyError" not in text
    # Run again: the kept passes are not redone, and the measure is computed and printed.
    again = run_signmix("fsd", str(path), "--measures", "activation_fsd", cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "activation_fsd" in again.stdout


def test_ctrl_c_during_group_searches_side_by_side_stops_each_and_keeps_their_runs(small_config, popen):
    """`signmix plan` with plan.parallel_groups: 2: Ctrl-C while two group searches run as Ray tasks."""
    path = small_config(strategy="tpe", max_concurrent=1, prune_ratios=[0.0, 0.2, 0.4, 0.6, 0.8])
    raw = path.read_text() + "plan: {parallel_groups: 2, group_evaluations: 4, mixtures_per_group: 5, compatibility: fsd, " \
                             "serving_options: [plain]}\n"
    path.write_text(raw)
    cfg = load_config(path)
    proc = popen("-m", "search.cli.main", "plan", str(path))
    err = Lines(proc.stderr)
    err.wait_for("plan: searching one body for", proc, timeout=600)
    deadline = time.monotonic() + 600
    while sum("] search: tpe" in line for line in err.lines) < 2:  # both group searches started their fits
        assert proc.poll() is None, err.text()[-3000:]
        assert time.monotonic() < deadline, "the group searches did not start:\n" + "".join(err.lines[-40:])
        time.sleep(0.1)
    assert sum("plan: searching one body for" in line for line in err.lines) == 2  # side by side
    took = _signal_and_wait(proc, signal.SIGINT)
    text = err.text()
    assert proc.returncode == 130, text[-3000:]
    assert took < 2 * STOP_WITHIN_S, f"the plan took {took:.1f} s to stop"
    stopped = [line for line in text.splitlines() if line.startswith("signmix: interrupted")]
    assert len(stopped) == 1 and "the plan stopped: 2 group search(es) in flight were stopped" in stopped[0], text[-3000:]
    searches = mlflow_runs(cfg, f"tags.`{KIND_TAG}` = 'search'")
    assert len(searches) == 2 and all(r.info.status == "KILLED" for r in searches), \
        [(r.info.run_name, r.info.status) for r in searches]
    assert "Traceback" not in text
