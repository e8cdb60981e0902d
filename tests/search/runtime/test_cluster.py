"""Running on an existing Ray cluster: the runtime environment, the storage path, the resource
check, and a real two-node cluster on this machine that a search spreads its trials over.

The two nodes are started with `ray start --block` as child processes, each in its own
process group and with its own ``--temp-dir``, ports and auth token (``tests/local_nodes.py``),
so nothing here can touch another Ray instance of the machine (``ray stop`` would stop them
all, including the session's ``ray_cluster``). The search's driver runs in a subprocess, so this pytest process
never joins the two-node cluster and the session's local cluster stays as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from search.runtime.cluster import (
    PACKAGES,
    check_cluster_storage,
    check_trial_fits,
    connect_ray,
    runtime_env_for_packages,
    storage_uri,
)
from search.settings.config import validate_config
from spaces.errors import UsageError
from local_nodes import free_ports, local_nodes

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path, **overrides):
    raw = {"name": "c", "base_model": "m", "domains": {"books": {"path": str(tmp_path)}},
           "search": {"targets": ["books"]}, **overrides}
    return validate_config(raw, base_dir=tmp_path)


# --- the runtime environment and the storage path ------------------------------------

def test_runtime_env_ships_the_four_packages_and_nothing_else():
    env = runtime_env_for_packages()
    assert [Path(p) for p in env["py_modules"]] == [REPO / name for name in PACKAGES]
    for path in env["py_modules"]:
        assert (Path(path) / "__init__.py").is_file()
        assert ".venv" not in Path(path).parts and "tests" not in Path(path).parts
    assert "__pycache__" in env["excludes"]


@pytest.mark.parametrize("storage, expected", [
    ("s3://bucket/signmix/runs", "s3://bucket/signmix/runs"),
    ("s3://bucket/runs?endpoint_override=minio:9000&scheme=http", "s3://bucket/runs?endpoint_override=minio:9000&scheme=http"),
    ("gs://bucket/runs", "gs://bucket/runs"),
    ("runs", "{tmp}/runs"),
])
def test_storage_uri_keeps_uris_and_makes_local_paths_absolute(tmp_path, storage, expected):
    cfg = _config(tmp_path, ray={"storage_path": storage}, store=str(tmp_path / "adapters"),
                  mlflow={"tracking_uri": "http://127.0.0.1:5000"})
    assert storage_uri(cfg) == expected.format(tmp=tmp_path.resolve())


@pytest.mark.parametrize("store, tracking, missing", [
    (None, None, ["`store`", "`mlflow.tracking_uri`"]),
    ("shared/adapters", None, ["`mlflow.tracking_uri`"]),
    (None, "http://127.0.0.1:5000", ["`store`"]),
])
def test_an_s3_storage_path_needs_an_explicit_store_and_tracking_uri(tmp_path, store, tracking, missing):
    cfg = _config(tmp_path, ray={"storage_path": "s3://bucket/runs"}, store=store, mlflow={"tracking_uri": tracking})
    with pytest.raises(UsageError) as err:
        check_cluster_storage(cfg)
    for name in missing:
        assert name in str(err.value)
    assert "s3://bucket/runs" in str(err.value)


def test_an_s3_storage_path_with_store_and_tracking_uri_is_accepted(tmp_path):
    cfg = _config(tmp_path, ray={"storage_path": "s3://bucket/runs"}, store=str(tmp_path),
                  mlflow={"tracking_uri": "http://127.0.0.1:5000"})
    check_cluster_storage(cfg)


# --- does one trial fit on some node? ---------------------------------------------------

def _node(cpu, gpu=0.0, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


@pytest.mark.parametrize("cpu, gpu, nodes", [
    (1, 0, [_node(1)]),
    (1, 0.25, [_node(2), _node(4, gpu=1)]),
    (2, 1, [_node(8, gpu=1)]),
])
def test_a_trial_that_fits_on_one_node_passes(cpu, gpu, nodes):
    check_trial_fits(cpu, gpu, nodes)


@pytest.mark.parametrize("cpu, gpu, nodes, message", [
    (1, 0.25, [_node(2), _node(2)], "resources.gpu is 0.25 but the Ray cluster has no GPU"),
    (1, 0.25, [_node(2), _node(2, gpu=1, alive=False)], "has no GPU"),
    (4, 0, [_node(2), _node(2)], "no node of the Ray cluster has that much (the largest has 2 CPUs"),
    (1, 2, [_node(8, gpu=1), _node(8, gpu=1)], "no node of the Ray cluster has that much"),
])
def test_a_trial_that_fits_nowhere_is_a_usage_error(cpu, gpu, nodes, message):
    with pytest.raises(UsageError) as err:
        check_trial_fits(cpu, gpu, nodes)
    assert message in str(err.value)


def test_a_ray_client_address_is_refused_with_the_way_that_works(tmp_path):
    cfg = _config(tmp_path, ray={"address": "ray://bob:s3cret@127.0.0.1:10001"})
    with pytest.raises(UsageError) as err:
        connect_ray(cfg)
    assert "signmix submit CONFIG --address http://HEAD:8265" in str(err.value)
    assert "'ray://127.0.0.1:10001'" in str(err.value) and "s3cret" not in str(err.value)


def test_a_library_caller_gets_a_usage_error_at_once_for_a_dead_address(tmp_path):
    # In a fresh process: this one may already hold the session's Ray cluster.
    port = free_ports(1)[0]
    raw = {"name": "c", "base_model": "m", "domains": {"books": {"path": str(tmp_path)}},
           "search": {"targets": ["books"]}, "ray": {"address": f"127.0.0.1:{port}"}}
    code = textwrap.dedent(f"""
        import sys
        from search.runtime.cluster import connect_ray
        from search.settings.config import validate_config
        from spaces.errors import UsageError
        try:
            connect_ray(validate_config({raw!r}, base_dir={str(tmp_path)!r}))
        except UsageError as e:
            print("UsageError:", e)
            sys.exit(3)
        """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"127.0.0.1:{port}" in proc.stdout
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("config_address, env, expected", [
    (None, None, None),                               # a local cluster of the command's own
    (None, "10.0.0.1:6379", "10.0.0.1:6379"),         # Ray's own variable, as ray.init reads it
    (None, "auto", "auto"),
    (None, "local", None),
    (None, "http://127.0.0.1:8265", None),            # the dashboard of `ray job submit`, not a cluster
    (None, "ray://head:10001", None),                 # a Ray Client: never joined
    ("10.0.0.2:6379", "10.0.0.1:6379", "10.0.0.2:6379"),  # the config (or --address) wins
])
def test_a_command_joins_ray_address_from_its_environment_unless_the_config_names_one(
        tmp_path, monkeypatch, config_address, env, expected):
    from search.runtime.cluster import cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    cfg = _config(tmp_path, **({"ray": {"address": config_address}} if config_address else {}))
    assert cluster_address(cfg) == expected


def test_a_dead_ray_address_in_the_environment_names_the_variable_and_the_way_back_to_a_local_cluster(tmp_path):
    # In a fresh process: this one may already hold the session's Ray cluster.
    port = free_ports(1)[0]
    code = textwrap.dedent(f"""
        import sys
        from search.runtime.cluster import connect_ray
        from search.settings.config import validate_config
        from spaces.errors import UsageError
        try:
            connect_ray(validate_config({{"name": "c", "base_model": "m", "domains": {{"books": {{"path": "."}}}},
                                         "search": {{"targets": ["books"]}}}}, base_dir={str(tmp_path)!r}))
        except UsageError as e:
            print("UsageError:", e)
            sys.exit(3)
        """)
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"127.0.0.1:{port}" in proc.stdout and "unset RAY_ADDRESS" in proc.stdout, proc.stdout


# --- a real two-node cluster --------------------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node (1 CPU, 0 GPU each) on this machine, stopped afterwards."""
    with local_nodes([1]) as nodes:
        yield nodes
    assert all(p.returncode is not None for p in nodes["nodes"])


# The search's driver, run as `python -c DRIVER CONFIG OUT`: trains, searches, then asks
# each node which copy of signmix its workers import and which node ids exist.
DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    cfg = load_config(sys.argv[1])
    training = run_training(cfg)
    summary = run_search(cfg)

    @ray.remote(num_cpus=0)
    def which_signmix():
        import search
        return ray.get_runtime_context().get_node_id(), search.__file__

    nodes = [n for n in ray.nodes() if n["Alive"]]
    imports = ray.get([which_signmix.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote() for n in nodes])
    json.dump({"trained": training.trained, "failed": training.failed, "evaluated": summary.evaluated,
               "search_failed": summary.failed,
               "nodes": {n["NodeID"]: n["RayletSocketName"] for n in nodes}, "imports": dict(imports)},
              open(sys.argv[2], "w"))
""")


def _trial_pids(storage: Path) -> dict[str, set[int]]:
    """The worker pids that reported each search trial's results (Ray Tune's result.json)."""
    pids = {}
    for result in storage.glob("search-*/*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        pids[result.parent.name] = {r["pid"] for r in lines}
    return pids


def _node_of_pid(pid: int, nodes: dict[str, str]) -> str:
    """The node id whose own log folder (under its --temp-dir) holds the worker ``pid``'s log."""
    owners = [node_id for node_id, raylet_socket in nodes.items()
              if list((Path(raylet_socket).parents[1] / "logs").glob(f"worker-*-{pid}.out"))]
    assert len(owners) == 1, f"worker pid {pid} found on {len(owners)} nodes"
    return owners[0]


@pytest.fixture(scope="module")
def searched(two_nodes, tmp_path_factory, tiny_bert, demo_domains):
    from tests_support import write_config

    folder = tmp_path_factory.mktemp("cluster")
    domains = {d: demo_domains[d] for d in ("books", "electronics")}
    # {books}, {books, electronics} x 2 pruning ratios = 4 mixtures, 2 at a time, 1 CPU each:
    # two trials running at once must be on different nodes.
    cfg_path = write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"],
                            search={"max_fsd": None, "num_mixtures": 4, "max_concurrent": 2},
                            ray={"address": two_nodes["address"]})
    out = folder / "driver.json"
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", DRIVER, str(cfg_path), str(out)], env=two_nodes["env"],
                         cwd=folder, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    return folder, cfg_path, json.loads(out.read_text()), time.monotonic() - started


@pytest.mark.integration
def test_search_on_an_existing_cluster_runs_its_trials_on_both_nodes(searched, two_nodes):
    folder, _, report, _ = searched
    assert sorted(report["trained"]) == ["books", "electronics"] and not report["failed"]
    assert report["evaluated"] == 4 and report["search_failed"] == 0
    nodes = report["nodes"]
    assert len(nodes) == 2
    pids = _trial_pids(folder / "runs")
    assert len(pids) == 4, f"expected 4 search trials with results, found {sorted(pids)}"
    nodes_that_reported = {_node_of_pid(pid, nodes) for trial in pids.values() for pid in trial}
    assert nodes_that_reported == set(nodes), "every node of the cluster ran search trials"


@pytest.mark.integration
def test_workers_import_the_drivers_packages_from_the_runtime_environment(searched):
    _, _, report, _ = searched
    assert set(report["imports"]) == set(report["nodes"])
    for node_id, module_file in report["imports"].items():
        # Each node unpacked the shipped package into its own session, not the repo checkout.
        node_session = Path(report["nodes"][node_id]).parents[1]
        assert Path(module_file).is_relative_to(node_session / "runtime_resources" / "py_modules_files"), module_file
        assert not Path(module_file).is_relative_to(REPO)


@pytest.mark.integration
def test_asking_for_a_gpu_on_a_cluster_without_gpus_fails_at_once(searched, two_nodes):
    import yaml

    folder, cfg_path, _, _ = searched
    raw = yaml.safe_load(cfg_path.read_text())
    raw["resources"] = {"cpu": 1, "gpu": 0.25}
    raw["ray"]["address"] = None  # given on the command line instead
    gpu_cfg = folder / "gpu.yaml"
    gpu_cfg.write_text(yaml.safe_dump(raw))
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "search.cli.main", "search", str(gpu_cfg), "--address",
                          two_nodes["address"]], env=two_nodes["env"], cwd=folder, capture_output=True,
                         text=True, timeout=60)
    seconds = time.monotonic() - started
    assert run.returncode == 2, run.stderr[-3000:]
    assert "resources.gpu is 0.25 but the Ray cluster has no GPU" in run.stderr
    assert "Traceback" not in run.stderr
    assert seconds < 30


@pytest.mark.integration
def test_joining_a_token_cluster_without_the_token_names_the_fix(searched, two_nodes):
    _, cfg_path, _, _ = searched
    env = {k: v for k, v in two_nodes["env"].items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    run = subprocess.run([sys.executable, "-m", "search.cli.main", "train", str(cfg_path), "--force"], env=env,
                         cwd=cfg_path.parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "set RAY_AUTH_MODE=token" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def searched_with_the_default_measure(searched, two_nodes, tmp_path_factory, tiny_bert, demo_domains):
    """The same search on the same two-node cluster with the product's default conflict measure
    (activation FSD: one probe trial per adapter before the search), over ``searched``'s store."""
    from tests_support import write_config

    first, _, _, _ = searched
    folder = tmp_path_factory.mktemp("cluster-activation")
    cfg_path = write_config(folder, base_model=tiny_bert, domains={d: demo_domains[d] for d in ("books", "electronics")},
                            targets=["books"], default_conflict_measure=True, store=str(first / "adapters"),
                            search={"max_fsd": None, "num_mixtures": 4, "max_concurrent": 2},
                            ray={"address": two_nodes["address"]})
    out = folder / "driver.json"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(cfg_path), str(out)], env=two_nodes["env"],
                         cwd=folder, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    return folder, cfg_path, json.loads(out.read_text())


@pytest.mark.integration
def test_default_activation_fsd_search_on_two_local_nodes_standing_in_for_a_remote_cluster_probes_on_the_nodes(
        searched_with_the_default_measure):
    # Nothing of signmix is mocked: the "remote" cluster is two Ray nodes started on this machine
    # (so the store and storage path are shared by a file system, as a cluster's shared storage is).
    import yaml
    from mlflow import MlflowClient

    from search.settings.config import load_config
    from search.tracking.layout import GATE_MEASURE_TAG

    folder, cfg_path, report = searched_with_the_default_measure
    assert "conflict_measure" not in yaml.safe_load(cfg_path.read_text())["search"], "the product's default"
    cfg = load_config(cfg_path)
    assert cfg.search.conflict_measure == "activation_fsd"
    assert not report["failed"] and report["evaluated"] == 4 and report["search_failed"] == 0
    # One probe trial per adapter ran on the cluster's nodes, and wrote its pass into the store.
    probes = {}
    for result in (folder / "runs").glob("*-probes-*/*/result.json"):
        probes[result.parent.name] = {json.loads(line)["pid"] for line in result.read_text().splitlines() if line.strip()}
    assert len(probes) == 2, f"expected a probe trial per adapter, found {sorted(probes)}"
    assert {_node_of_pid(pid, report["nodes"]) for pids in probes.values() for pid in pids} <= set(report["nodes"])
    kept = list((Path(cfg.store_path) / ".measures").glob("*/probes/*.safetensors"))
    assert sorted(p.stem for p in kept) == ["books", "electronics"]
    # The search's gate checked activation FSD, and said so on its MLflow run.
    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    (search_run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`signmix.kind` = 'search'")
    assert search_run.data.tags[GATE_MEASURE_TAG] == "activation_fsd"
