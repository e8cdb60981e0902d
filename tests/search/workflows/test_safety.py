"""Safe by default: safetensors only, no remote code unless asked, loopback servers, no
secrets in output or in MLflow parameters."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from tests_support import run_signmix as signmix  # the command, forked from a server that imported it once
from tests_support import write_config

REPO = Path(__file__).resolve().parents[3]
PRODUCT = [p for package in ("spaces", "trainables", "search", "mlflow_server")
           for p in sorted((REPO / package).rglob("*.py"))]
SECRET = "s3cretpw"



def _calls(name: str):
    """(file, line, call node) for every method call ``<something>.name(...)`` in product code."""
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == name:
                    yield path.relative_to(REPO), node.lineno, node


# --- safetensors only ---------------------------------------------------------------------------

# Ray Tune's own searcher snapshot (save/restore for `search --resume`), written by this
# process into ray.storage_path beside Ray's own pickled tuner.pkl: the same trust as Ray's
# state, and never an adapter or a downloaded file.
PICKLE_ALLOWED = {"search/proposals/searcher.py"}


# The one place a user's pickle-only adapter file (pytorch_adapter.bin, adapter_model.bin) is
# read, and only with the adapter's `allow_pickle: true`: torch's tensors-only unpickler.
TORCH_LOAD_ALLOWED = {"trainables/imports/files.py"}


def test_product_code_never_unpickles_adapter_or_model_files():
    torch_load = re.compile(r"\btorch\.load\s*\(")
    unpickle = re.compile(r"\b(pickle\.loads?|cloudpickle\.loads?|joblib\.load|dill\.loads?)\s*\(")
    hits = []
    for path in PRODUCT:
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            call = ast.unparse(node.func)
            if torch_load.search(call + "("):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not (safe and name in TORCH_LOAD_ALLOWED):
                    hits.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
            elif unpickle.search(call + "(") and name not in PICKLE_ALLOWED:
                hits.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert hits == []
    # The allowed reader exists and is the tensors-only one (the test looks in the right place).
    assert "weights_only=True" in (REPO / "trainables/imports/files.py").read_text(encoding="utf-8")
    # Where adapters and heads are read and written, nothing can unpickle at all.
    for module in ("trainables/store.py", "trainables/evaluate.py", "trainables/mixture_trial.py", "search/workflows/export.py"):
        assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|dill|joblib)\b",
                             (REPO / module).read_text(encoding="utf-8"), re.M), module


@pytest.mark.parametrize("method", ["load_adapter", "load_head", "save_adapter", "save_head"])
def test_every_adapter_load_and_save_asks_for_safetensors(method):
    calls = list(_calls(method))
    if method in ("load_adapter", "load_head", "save_adapter"):
        assert calls, f"no {method} call found: the test looks in the wrong place"
    for path, line, node in calls:
        if ast.unparse(node.func).split(".")[-2].endswith("store"):
            continue  # AdapterStore's own methods: safetensors by construction (tested below)
        kwargs = {k.arg: k.value for k in node.keywords}
        value = kwargs.get("use_safetensors")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{line}: {method} without use_safetensors=True"


def test_the_store_reads_safetensors_and_refuses_a_pickled_adapter(tmp_path):
    from safetensors.torch import save_file

    from spaces.errors import StoreError
    from trainables.store import AdapterStore

    store = AdapterStore(tmp_path)
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "signmix.json").write_text(json.dumps({"domain": "books"}))
    torch.save({"w": torch.ones(2)}, tmp_path / "books" / "pytorch_adapter.bin")
    with pytest.raises(StoreError, match="adapter.safetensors is missing"):
        store.load_weights("books")
    save_file({"w": torch.ones(2)}, str(tmp_path / "books" / "adapter.safetensors"))
    assert torch.equal(store.load_weights("books")["w"], torch.ones(2))


def test_evaluate_refuses_an_export_without_safetensors(tmp_path):
    export = tmp_path / "best"
    (export / "heads" / "books").mkdir(parents=True)
    (export / "mixture.json").write_text(json.dumps({"targets": ["books"], "evaluation": {}}))
    (export / "adapter_config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, export / "pytorch_adapter.bin")
    out = signmix("evaluate", str(export))
    assert out.returncode == 2, out.stderr
    assert "signmix reads weights from safetensors files only" in out.stderr
    assert "adapter.safetensors, heads/books/model_head.safetensors" in out.stderr
    assert "Traceback" not in out.stderr


# --- trust_remote_code ----------------------------------------------------------------------------

def test_trust_remote_code_is_off_unless_the_config_says_so(tmp_path, demo_domains):
    from search.settings.config import load_config

    cfg = load_config(write_config(tmp_path, base_model="bert-base-uncased", domains={"books": demo_domains["books"]},
                                   targets=["books"]))
    assert cfg.trust_remote_code is False
    assert cfg.model_dump()["trust_remote_code"] is False


def test_trust_remote_code_is_never_switched_on_in_code_only_passed_through():
    # passed through from the config (self: Config.experiment), the typed experiment or an export's record
    allowed = {"trust_remote_code", "cfg.trust_remote_code", "self.trust_remote_code", "experiment.trust_remote_code",
               "ev['trust_remote_code']", "self.settings['trust_remote_code']"}  # a bundle's record, written from the config
    passed = []
    for path in PRODUCT:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                passed.append((f"{path.relative_to(REPO)}:{node.value.lineno}", ast.unparse(node.value)))
            if isinstance(node, ast.arguments):  # every default is False
                named = node.args[len(node.args) - len(node.defaults):] + node.kwonlyargs
                defaults = list(node.defaults) + list(node.kw_defaults)
                for arg, default in zip(named, defaults):
                    if arg.arg == "trust_remote_code":
                        assert isinstance(default, ast.Constant) and default.value is False, path
    assert passed, "no trust_remote_code argument found: the test looks in the wrong place"
    assert [p for p in passed if p[1] not in allowed] == []


# --- loopback servers -------------------------------------------------------------------------------

def test_the_mlflow_server_binds_loopback_by_default(tmp_path):
    from mlflow_server.server import ServerSettings, server_command
    from search.cli.main import build_parser

    args = build_parser().parse_args(["server"])
    assert args.host == "127.0.0.1"
    settings = ServerSettings(root=str(tmp_path))
    assert settings.host == "127.0.0.1"
    command = server_command(settings)
    assert command[command.index("--host") + 1] == "127.0.0.1"


# --- secrets ----------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", [f"http://alice:{SECRET}@127.0.0.1:{{port}}", f"postgresql://u:{SECRET}@127.0.0.1:{{port}}/db"],
                         ids=["http", "postgresql"])
@pytest.mark.parametrize("command", ["train", "search", "export"])
def test_a_password_in_the_tracking_uri_is_never_printed(uri, command, tmp_path, tiny_bert, demo_domains):
    cfg = write_config(tmp_path, base_model=tiny_bert, domains={"books": demo_domains["books"]}, targets=["books"],
                       mlflow={"tracking_uri": uri.format(port=_free_port())})
    args = ["--out", str(tmp_path / "best")] if command == "export" else []
    out = signmix(command, str(cfg), *args)
    assert out.returncode in (1, 2), out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    assert ":***@127.0.0.1" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_secret_reaches_the_mlflow_parameters_of_a_run(tmp_path, monkeypatch, demo_domains):
    """The parameters the runner logs for training and for a search, written to a SQLite
    store, hold no tracking URI (with its password), Ray address or store location."""
    import mlflow

    import search.workflows.mixture_search
    import search.tracking.tracker
    import search.workflows.adapter_training
    from search.settings.config import load_config
    from spaces.fsd import SignIndex

    cfg = load_config(write_config(
        tmp_path, base_model="some-org/some-model", domains={d: demo_domains[d] for d in ("books", "kitchen")},
        targets=["books"], mlflow={"tracking_uri": f"http://alice:{SECRET}@127.0.0.1:1"},
        ray={"address": f"ray://bob:{SECRET}@127.0.0.1:10001"}))
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class Captured(Exception):
        pass

    logged: dict[str, dict] = {}
    real_tracker = search.tracking.tracker.SearchTracker

    class Tracker(real_tracker):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, "tracking_uri": sqlite})

        def start(self, *, params, run_name, tags=None):
            logged["search"] = params
            super().start(params=params, run_name=run_name, tags=tags)
            raise Captured

    class Tracking:
        def __init__(self, *, params, **kwargs):
            logged["training"] = params
            raise Captured

    weights = {d: {"layer.0.w": torch.randn(8, generator=torch.Generator().manual_seed(i))}
               for i, d in enumerate(("books", "kitchen"))}
    real_open = search.tracking.tracker.open_experiment
    # The runners import these names at their top: they are replaced where the runners read them.
    monkeypatch.setattr(search.workflows.mixture_search, "SearchTracker", Tracker)
    monkeypatch.setattr(search.workflows.adapter_training, "open_config_experiment",
                        lambda cfg: real_open(sqlite, cfg.experiment_name))
    monkeypatch.setattr(search.tracking.tracker, "open_experiment",
                        lambda uri, name, **kwargs: real_open(sqlite, name, **kwargs))
    monkeypatch.setattr(search.workflows.adapter_training, "TrainingTracking", Tracking)
    monkeypatch.setattr(search.workflows.adapter_training, "connect_ray", lambda cfg, debug=False: None)
    monkeypatch.setattr(search.workflows.mixture_search, "connect_ray", lambda cfg, debug=False: None)
    monkeypatch.setattr(search.workflows.mixture_search, "load_sign_index", lambda root, domains: (weights, SignIndex.from_weights(weights)))

    with pytest.raises(Captured):
        search.workflows.adapter_training.run_training(cfg)
    with pytest.raises(Captured):
        search.workflows.mixture_search.run_search(cfg)

    client = mlflow.MlflowClient(sqlite)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stored = {p: v for r in runs for p, v in r.data.params.items()}
    assert stored, "the search run's parameters were not written"
    for params in (logged["training"], logged["search"], stored):
        text = json.dumps({str(k): str(v) for k, v in params.items()})
        assert SECRET not in text
        assert "127.0.0.1" not in text and str(tmp_path) not in text
        assert not [k for k in params if str(k).startswith(("mlflow.", "ray."))]

