"""Tests of mlflow_server: the argv we launch, URI redaction, reachability checks, and a real server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

import mlflow_server.cli as cli_module
import mlflow_server.server as server_module
from mlflow_server import (
    ServerSettings,
    TrackingServer,
    add_server_arguments,
    check_reachable,
    free_port,
    redact_uri,
    run_server,
    server_command,
)
from spaces.errors import TrackingError, UsageError


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _live_group_members(group: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``group``."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            members.append(int(stat_file.parent.name))
    return members


# --- the command line ------------------------------------------------------------------------

COMMAND_CASES = [
    pytest.param(
        {},
        {
            "--host": "127.0.0.1",
            "--port": "5000",
            "--workers": "1",
            "--backend-store-uri": "sqlite:///{root}/mlflow.db",
            "--artifacts-destination": "{root}/artifacts",
            "--app-name": None,
            "--allowed-hosts": None,
        },
        id="defaults-loopback-sqlite",
    ),
    pytest.param(
        {"backend_store_uri": "postgresql://mlflow:pw@db.internal/mlflow", "artifacts_destination": "s3://bucket/runs"},
        {
            "--backend-store-uri": "postgresql://mlflow:pw@db.internal/mlflow",
            "--artifacts-destination": "s3://bucket/runs",
        },
        id="postgres-and-s3-passthrough",
    ),
    pytest.param(
        {"app_name": "basic-auth", "host": "0.0.0.0", "port": 8080, "workers": 4},
        {"--app-name": "basic-auth", "--host": "0.0.0.0", "--port": "8080", "--workers": "4"},
        id="basic-auth-on-network",
    ),
    pytest.param(
        {
            "host": "0.0.0.0",
            "allowed_hosts": ("mlflow.lab", "10.0.0.5:5000"),
            "cors_allowed_origins": ("https://nb.lab",),
        },
        {"--allowed-hosts": "mlflow.lab,10.0.0.5:5000", "--cors-allowed-origins": "https://nb.lab"},
        id="security-options",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), COMMAND_CASES)
def test_server_command(tmp_path: Path, overrides: dict[str, object], expected: dict[str, str | None]) -> None:
    argv = server_command(ServerSettings(root=str(tmp_path), **overrides))  # type: ignore[arg-type]
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert "--serve-artifacts" in argv
    for name, value in expected.items():
        wanted = None if value is None else value.format(root=tmp_path.resolve().as_posix())
        assert _option(argv, name) == wanted, name


@pytest.mark.parametrize(
    ("host", "app_name", "warns"),
    [("0.0.0.0", None, True), ("192.168.1.10", None, True), ("0.0.0.0", "basic-auth", False),
     ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False)],
)  # fmt: skip
def test_network_binding_without_auth_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, app_name: str | None, warns: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlflow_server.server"):
        server_command(ServerSettings(root=str(tmp_path), host=host, app_name=app_name))
    assert any("without authentication" in r.getMessage() for r in caplog.records) == warns


@pytest.mark.parametrize(
    "overrides",
    [{"port": 0}, {"port": 70000}, {"workers": 0}, {"app_name": "oauth"}, {"host": " "}],
)
def test_invalid_settings_are_usage_errors(tmp_path: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        ServerSettings(root=str(tmp_path), **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:5123"), ("0.0.0.0", "http://127.0.0.1:5123"), ("::", "http://[::1]:5123")],
)
def test_url_points_clients_at_a_reachable_address(tmp_path: Path, host: str, url: str) -> None:
    assert TrackingServer(settings=ServerSettings(root=str(tmp_path), host=host, port=5123)).url == url


def test_cli_arguments_default_to_loopback_sqlite(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args([])
    defaults = (args.root, args.host, args.port, args.workers, args.basic_auth)
    assert defaults == ("./mlflow_store", "127.0.0.1", 5000, 1, False)
    args = parser.parse_args(["--basic-auth", "--allowed-hosts", "a.lab, b.lab", "--port", "6000"])
    assert args.basic_auth and args.allowed_hosts == ("a.lab", "b.lab") and args.port == 6000


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg2://mlflow:p%40ss@db:5432/mlflow", "postgresql+psycopg2://mlflow:***@db:5432/mlflow"),
        ("mysql://u:p@ss@h:3306/db", "mysql://u:***@h:3306/db"),
        ("http://alice:hunter2@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
        ("postgresql://h/db?user=u&password=secret&ssl=1", "postgresql://h/db?user=u&password=***&ssl=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////tmp/store/mlflow.db", "sqlite:////tmp/store/mlflow.db"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_redact_uri(uri: str, redacted: str) -> None:
    assert redact_uri(uri) == redacted


# --- reachability ----------------------------------------------------------------------------


def test_check_reachable_accepts_writable_local_stores(tmp_path: Path) -> None:
    check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
    check_reachable(f"sqlite:///{tmp_path}/not/yet/created/mlflow.db")
    check_reachable(f"file://{tmp_path}/mlruns")
    check_reachable("postgresql://u:pw@db.invalid/mlflow")  # not checked locally


def test_check_reachable_names_an_unusable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match=str(blocker)):
        check_reachable(f"sqlite:///{blocker}/mlflow.db")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_check_reachable_rejects_read_only_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(UsageError, match="not writable"):
            check_reachable(f"sqlite:///{locked}/sub/mlflow.db")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_check_reachable_raises_for_a_silent_http_server() -> None:
    uri = f"http://user:topsecret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match="cannot be reached") as info:
        check_reachable(uri, timeout=2)
    assert "topsecret" not in str(info.value) and "user:***@" in str(info.value)
    assert "signmix server" in str(info.value)


@pytest.fixture
def basic_auth_health_server():
    """A loopback HTTP server whose /health wants basic auth as user:pw (what MLflow's
    basic-auth app does); yields its port."""
    import base64
    import http.server

    expected = "Basic " + base64.b64encode(b"user:p@ss word").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_check_reachable_sends_credentials_in_the_uri_as_basic_auth(basic_auth_health_server) -> None:
    check_reachable(f"http://user:p%40ss%20word@127.0.0.1:{basic_auth_health_server}")
    with pytest.raises(TrackingError, match="HTTP 401") as info:
        check_reachable(f"http://user:wrong@127.0.0.1:{basic_auth_health_server}")
    assert "wrong" not in str(info.value)
    with pytest.raises(TrackingError, match="HTTP 401"):
        check_reachable(f"http://127.0.0.1:{basic_auth_health_server}")


# --- process handling with stand-in servers (fast) -------------------------------------------


def _fake_command(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    monkeypatch.setattr(server_module, "server_command", lambda settings: [sys.executable, "-c", code])


def _http_server_code(port: int) -> str:
    # A stand-in that answers /health like MLflow does, so the lifecycle is tested in a second.
    return (
        "import http.server, os, pathlib; pathlib.Path('health').write_text('OK'); "
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    )


@pytest.mark.parametrize(
    ("output", "fix"),
    [
        ("boom: backend store unusable", "--port"),
        ("ModuleNotFoundError: No module named 'psycopg2'", "install the missing package"),
        ("[Errno 98] error while attempting to bind: address already in use", "choose another with --port"),
    ],
)
def test_start_failure_reports_the_log_tail_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, fix: str
) -> None:
    _fake_command(monkeypatch, f"import sys; print({output!r}); sys.exit(3)")
    server = TrackingServer(settings=ServerSettings(root=str(tmp_path / "store"), port=free_port()))
    with pytest.raises(TrackingError, match="exited with code 3") as info:
        server.start(timeout=20)
    assert output in str(info.value)
    assert fix in str(info.value).rpartition("Fix:")[2]
    assert (tmp_path / "store" / "server.log").exists() and not server.running


def test_start_timeout_stops_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_command(monkeypatch, "import time; time.sleep(60)")
    server = TrackingServer(settings=ServerSettings(root=str(tmp_path), port=free_port()))
    with pytest.raises(TrackingError, match="did not answer"):
        server.start(timeout=1)
    assert not server.running


def test_basic_auth_needs_flask_wtf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "_module_installed", lambda name: name != "flask_wtf")
    server = TrackingServer(settings=ServerSettings(root=str(tmp_path), port=free_port(), app_name="basic-auth"))
    with pytest.raises(UsageError, match=r"mlflow\[auth\]"):
        server.start()


def test_basic_auth_first_start_needs_an_admin_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "_module_installed", lambda name: True)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    server = TrackingServer(settings=ServerSettings(root=str(tmp_path), port=free_port(), app_name="basic-auth"))
    with pytest.raises(UsageError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        server.start()


def test_occupied_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        with pytest.raises(TrackingError, match=f"port {port} .*--port"):
            TrackingServer(settings=ServerSettings(root=str(tmp_path), port=port)).start()


def test_run_server_stops_cleanly_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    _fake_command(monkeypatch, _http_server_code(port))
    started: list[TrackingServer] = []
    pids: list[int | None] = []

    class RecordingServer(TrackingServer):
        def start(self, timeout: float = 60) -> TrackingServer:
            started.append(self)
            return super().start(timeout)

    monkeypatch.setattr(cli_module, "TrackingServer", RecordingServer)
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(["--root", str(tmp_path / "store"), "--port", str(port)])

    def terminate_when_up() -> None:
        # What Ctrl-C or `kill` does to the foreground `signmix server`.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (started and started[0].running):
            time.sleep(0.05)
        pids.append(started[0].pid)
        os.kill(os.getpid(), signal.SIGTERM)

    sigterm_before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_when_up, daemon=True)
    killer.start()
    with caplog.at_level(logging.INFO, logger="mlflow_server.cli"):
        assert run_server(args) == 0
    killer.join(timeout=5)
    infos = [r.getMessage() for r in caplog.records if r.name == "mlflow_server.cli"]
    assert len(infos) == 1 and f"http://127.0.0.1:{port}" in infos[0]
    assert pids and pids[0] is not None and _live_group_members(pids[0]) == []
    assert signal.getsignal(signal.SIGTERM) == sigterm_before  # handler restored
    with pytest.raises(TrackingError):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)


# --- a real MLflow server --------------------------------------------------------------------


@pytest.mark.integration
def test_real_server_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    # The GenAI job runner is not used by signmix and only slows the start down.
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    root = tmp_path / "store"
    settings = ServerSettings(root=str(root), port=free_port())
    with TrackingServer(settings=settings) as server:
        assert server.url == f"http://127.0.0.1:{settings.port}"
        check_reachable(server.url)

        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment_id = client.create_experiment("signmix-server-test")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "accuracy", 0.875, step=1)
        report = tmp_path / "report.txt"
        report.write_text("mixture A+B: 0.875\n")
        client.log_artifact(run.info.run_id, str(report))
        client.set_terminated(run.info.run_id)

        fetched = client.get_run(run.info.run_id)
        assert fetched.data.metrics["accuracy"] == pytest.approx(0.875)
        downloaded = client.download_artifacts(run.info.run_id, "report.txt", str(tmp_path / "download"))
        assert Path(downloaded).read_text() == "mixture A+B: 0.875\n"
        # Artifacts are proxied into <root>/artifacts, runs into <root>/mlflow.db.
        assert list((root / "artifacts").rglob("report.txt"))
        assert (root / "mlflow.db").exists()

        with pytest.raises(TrackingError, match=f"port {settings.port}"):
            TrackingServer(settings=settings).start(timeout=20)
        assert server.running  # the failed second start left the first server alone

        pid = server.pid
        assert pid is not None
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _live_group_members(pid) == []
    server.stop()  # idempotent
    with pytest.raises(TrackingError, match="cannot be reached"):
        check_reachable(server.url, timeout=2)
