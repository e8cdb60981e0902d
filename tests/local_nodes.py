"""Ray nodes of a cluster of our own on this machine, started with ``ray start --block``.

Each node runs in its own process group, with its own ``--temp-dir``, ports and auth token, so
nothing here can touch another Ray instance of the machine (``ray stop`` would stop them all,
including a test session's local cluster). Used by the two-node tests
(``tests/search/runtime/test_cluster.py``) and the benchmark of a plan's group searches against
the number of worker nodes (``tests/benchmarks/bench_parallel_groups.py``).
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

RAY = Path(sys.executable).parent / "ray"
NODE_START_TIMEOUT_S = 90
PORTS_PER_NODE = 22


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_args(temp_dir: Path, ports: list[int], cpus: int = 1) -> list[str]:
    """Everything that must differ between two nodes on one machine: ports and temp dir."""
    p = iter(ports)
    return ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
            f"--temp-dir={temp_dir}", f"--node-manager-port={next(p)}", f"--object-manager-port={next(p)}",
            f"--dashboard-agent-listen-port={next(p)}", f"--dashboard-agent-grpc-port={next(p)}",
            f"--runtime-env-agent-port={next(p)}", f"--metrics-export-port={next(p)}",
            "--worker-port-list=" + ",".join(str(next(p)) for _ in range(16))]


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # --block keeps `ray start` alive as the node's owner: SIGTERM to it stops exactly this
    # node's processes. Its own session keeps our signals away from pytest.
    with open(log, "w") as out:
        proc = subprocess.Popen([str(RAY), "start", "--block", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"`ray start` failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    return proc


def _processes_with_token(token: str) -> list[int]:
    """Our node processes (workers included): the ones whose environment holds our token."""
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"RAY_AUTH_TOKEN={token}".encode() in (entry / "environ").read_bytes():
                    mine.append(int(entry.name))
            except OSError:
                continue
    return mine


def kill_processes_with_token(token: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process holding ``token`` until none is left or ``timeout`` passes (a process
    can still be dying when listed, or be started by one that was); returns those left."""
    deadline = time.monotonic() + timeout
    while (left := _processes_with_token(token)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return left


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the node's group left behind
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def local_nodes(worker_cpus: list[int], *, head_cpus: int = 1):
    """A head node with ``head_cpus`` CPUs and one worker node per entry of ``worker_cpus``, no
    GPU, token authentication with a token of our own; stopped afterwards, every process of them
    killed. Yields ``{"address", "env", "temp_dirs"}``: the GCS address and the environment a
    driver of this cluster needs (the token, no ``RAY_ADDRESS``)."""
    # A short temp root: Ray's unix socket paths live under it and must stay < 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="smray-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    gcs_port, dashboard_port, *ports = free_ports(2 + PORTS_PER_NODE * (1 + len(worker_cpus)))
    port_sets = [ports[i * PORTS_PER_NODE:(i + 1) * PORTS_PER_NODE] for i in range(1 + len(worker_cpus))]
    names = ["head"] + [f"worker{i}" for i in range(len(worker_cpus))]
    nodes = []
    try:
        nodes.append(start_node(["--head", f"--port={gcs_port}", "--include-dashboard=false",
                                  f"--dashboard-port={dashboard_port}",
                                  *node_args(root / "head", port_sets[0], head_cpus)], env, root / "head.log"))
        for name, cpus, node_ports in zip(names[1:], worker_cpus, port_sets[1:]):
            nodes.append(start_node([f"--address=127.0.0.1:{gcs_port}", *node_args(root / name, node_ports, cpus)],
                                     env, root / f"{name}.log"))
        yield {"address": f"127.0.0.1:{gcs_port}", "env": env, "temp_dirs": [root / n for n in names],
               "nodes": nodes}
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        kill_processes_with_token(token)  # workers run in process groups of their own
        shutil.rmtree(root, ignore_errors=True)
