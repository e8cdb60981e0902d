"""A search survives its tracking server going away: the retrying client, alone and in a real search."""

from __future__ import annotations

import logging
import pickle
import threading
import time

import pytest
import requests

from mlflow_server import ServerSettings, TrackingServer, free_port
from search.tracking.mlflow_client import RETRY_ENV, is_unreachable, make_client, retry_seconds_from_env
from spaces.errors import TrackingError, UsageError

# --- the retrying client, without a server --------------------------------------------------------


def _mlflow_error(text: str, context: BaseException | None = None):
    from mlflow.exceptions import MlflowException

    exc = MlflowException(text)
    exc.__context__ = context
    return exc


def _unreachable_cases():
    from mlflow.exceptions import MlflowException

    refused = requests.exceptions.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")
    return [
        pytest.param(refused, True, id="connection-refused"),
        pytest.param(_mlflow_error("API request to http://h/api failed with exception ...", refused), True,
                     id="mlflow-wrapping-connection-error"),
        pytest.param(requests.exceptions.ReadTimeout("Read timed out"), True, id="read-timeout"),
        pytest.param(requests.exceptions.RetryError("too many 503 error responses"), True, id="http-503"),
        pytest.param(requests.exceptions.RetryError("too many 500 error responses"), False, id="http-500-is-a-bug"),
        pytest.param(_mlflow_error("The following failures occurred while downloading one or more artifacts: "
                                   "{'a': 'HTTPConnectionPool: Max retries exceeded (Connection refused)'}"), True,
                     id="artifact-download-threads"),
        pytest.param(MlflowException("Registered Model with name=x not found", error_code=5), False,
                     id="not-found-is-an-answer"),
        pytest.param(requests.exceptions.SSLError("certificate verify failed"), False, id="ssl-does-not-heal"),
        pytest.param(ValueError("bad value"), False, id="programming-error"),
    ]


@pytest.mark.parametrize(("exc", "expected"), _unreachable_cases())
def test_only_unreachable_server_errors_are_retried(exc, expected):
    assert is_unreachable(exc) is expected


def test_client_pickles_with_its_uri_and_window():
    client = make_client("http://user:secret@127.0.0.1:9", retry_seconds=7)
    copy = pickle.loads(pickle.dumps(client))
    assert copy.tracking_uri == client.tracking_uri and copy.retry_seconds == 7
    assert "secret" not in repr(copy)
    assert callable(copy.search_runs) and callable(copy.create_run)


@pytest.mark.parametrize(("value", "expected"), [("", 300.0), ("0", 0.0), ("12.5", 12.5)])
def test_retry_window_comes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(RETRY_ENV, value)
    assert retry_seconds_from_env() == expected
    assert make_client("http://127.0.0.1:9").retry_seconds == expected


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_retry_window_is_a_usage_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(RETRY_ENV, value)
    with pytest.raises(UsageError, match=RETRY_ENV):
        make_client("http://127.0.0.1:9")


def test_a_dead_server_raises_a_tracking_error_that_names_the_fix_within_the_window(caplog):
    window = 2.0
    client = make_client(f"http://127.0.0.1:{free_port()}", retry_seconds=window)
    caplog.set_level(logging.INFO, logger="search.tracking.mlflow_client")
    started = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        client.get_experiment_by_name("anything")
    elapsed = time.monotonic() - started
    assert window <= elapsed < window + 1.5
    message = str(raised.value)
    assert "unreachable for 2 s" in message and "Connection refused" in message
    assert "restart the server and run `signmix search CONFIG --resume`" in message and RETRY_ENV in message
    warnings = [r for r in caplog.records if r.name == "search.tracking.mlflow_client" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per try"
    # Once the window is spent the client does not wait a second time: later calls fail fast.
    started = time.monotonic()
    with pytest.raises(TrackingError):
        client.search_runs(["0"])
    assert time.monotonic() - started < 1.0


def test_reopening_a_search_run_rides_out_an_outage_like_every_other_call():
    """``update_run`` (a resumed search marks its parent RUNNING) is retried, then says how to resume."""
    dead = make_client(f"http://127.0.0.1:{free_port()}", retry_seconds=1)
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable for 1 s"):
        dead.update_run("0123456789abcdef", status="RUNNING")
    assert time.monotonic() - started < 10, "one try per request while our call runs"


def test_mlflow_makes_one_try_per_request_only_while_our_call_runs(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")  # the user's own setting wins
    client = make_client("http://127.0.0.1:9")
    seen = {}

    def spy(name):
        seen.update(retries=os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
                    timeout=os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT"))

    monkeypatch.setattr(client._client, "get_experiment_by_name", spy)
    client.get_experiment_by_name("x")
    assert seen == {"retries": "0", "timeout": "77"}
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


def test_a_run_created_before_the_answer_was_lost_is_not_created_twice(tmp_path, monkeypatch, caplog):
    client = make_client(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_seconds=30)
    experiment_id = client.create_experiment("dedupe")
    real_create = client._client.create_run
    calls = []

    def create_then_lose_the_answer(*args, **kwargs):
        run = real_create(*args, **kwargs)
        calls.append(run.info.run_id)
        if len(calls) == 1:
            raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")
        return run

    monkeypatch.setattr(client._client, "create_run", create_then_lose_the_answer)
    caplog.set_level(logging.INFO, logger="search.tracking.mlflow_client")
    run = client.create_run(experiment_id, run_name="books @ magnitude 0.5", tags={"signmix.mixture_key": "k1"})
    assert calls == [run.info.run_id], "the retry found the first run instead of creating a second"
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run.info.run_id]
    levels = [r.levelno for r in caplog.records if r.name == "search.tracking.mlflow_client"]
    assert levels == [logging.WARNING, logging.INFO], "one warning when it went away, one info when back"


# --- a real server stopped and restarted in the middle of a search -------------------------------------


@pytest.fixture
def server_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: unused, slow to start
    return ServerSettings(root=str(tmp_path / "server"), port=free_port())


def _outage(settings: ServerSettings, first: TrackingServer, experiment: str, log: dict, down_s: float) -> None:
    """Wait for a finished child run, stop the server, wait ``down_s``, start a new one with the same settings."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=first.url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and client.search_runs([exp.experiment_id], "tags.`signmix.status` = 'evaluated'",
                                                  max_results=1):
            break
        time.sleep(0.2)
    else:
        log["error"] = "no child run finished within 300 s"
        return
    log["stopping"] = time.monotonic()
    first.stop()
    log["stopped"] = time.monotonic()
    time.sleep(down_s)
    log["second"] = TrackingServer(settings=settings).start()
    log["restarted"] = time.monotonic()


@pytest.mark.integration
def test_a_search_rides_out_a_server_restart_and_loses_nothing(tmp_path, server_settings, ray_cluster, tiny_bert,
                                                               demo_domains, caplog, shared_store):
    from mlflow import MlflowClient
    from tests_support import write_config

    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training
    from search.tracking.layout import KEY_TAG, KIND_TAG, STATUS_TAG

    first = TrackingServer(settings=server_settings).start()
    log: dict = {}
    try:
        domains = {d: demo_domains[d] for d in ("books", "electronics", "kitchen")}
        cfg = load_config(write_config(
            tmp_path, base_model=tiny_bert, domains=domains, targets=["books"], mlflow={"tracking_uri": first.url},
            store=shared_store,
            search={"prune_ratios": [0.0, 0.5], "max_concurrent": 1}))
        run_training(cfg)
        caplog.set_level(logging.INFO, logger="search.tracking.mlflow_client")
        outage = threading.Thread(target=_outage, args=(server_settings, first, cfg.experiment_name, log, 8.0),
                                  daemon=True)
        outage.start()
        started = time.monotonic()
        summary = run_search(cfg)  # the driver stays in the main thread, as Ray Tune expects
        finished = time.monotonic()
        outage.join(timeout=120)
        assert "error" not in log, log.get("error")
        assert "restarted" in log, "the outage thread did not restart the server"

        ours = [r for r in caplog.records if r.name == "search.tracking.mlflow_client"]
        went_away = [r for r in ours if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]
        came_back = [r for r in ours if r.levelno == logging.INFO and "answers again" in r.getMessage()]
        assert len(went_away) == 1 and len(came_back) == 1, [r.getMessage() for r in ours]
        blocked = came_back[0].created - went_away[0].created
        down = log["restarted"] - log["stopping"]
        print(f"\nsearch {finished - started:.1f} s ({summary.evaluated} evaluated, {summary.filtered_mixtures} "
              f"filtered); server down {down:.1f} s (stop and restart included); "
              f"search blocked {blocked:.1f} s\n  {went_away[0].getMessage()}\n  {came_back[0].getMessage()}")
        # The client notices the new server within one backoff step (at most 5 s) of its start.
        assert 8.0 <= blocked <= down + 7.0

        client = MlflowClient(tracking_uri=log["second"].url)
        exp = client.get_experiment_by_name(cfg.experiment_name)
        (parent,) = client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'search'")
        assert parent.info.status == "FINISHED" and parent.data.metrics["evaluated"] == summary.evaluated
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                      max_results=1000)
        assert len(children) == summary.evaluated + summary.filtered_mixtures
        assert len({c.data.tags[KEY_TAG] for c in children}) == len(children), "no run created twice"
        assert summary.evaluated >= 2 and summary.failed == 0
        evaluated = [c for c in children if c.data.tags[STATUS_TAG] == "evaluated"]
        assert len(evaluated) == summary.evaluated
        for child in evaluated:
            assert child.info.status == "FINISHED"
            assert {"accuracy_mean", "accuracy/books", "macro_f1/books", "fsd", "sparsity"} <= set(child.data.metrics)
            files = {f.path for f in client.list_artifacts(child.info.run_id, "mixture")}
            assert "mixture/adapter.safetensors" in files
        assert {c.data.tags[STATUS_TAG] for c in children} <= {"evaluated", "filtered"}
        assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    finally:
        first.stop()
        if "second" in log:
            log["second"].stop()
