"""Bad input gets one clear error, and nothing is half-written.

One table of bad situations, each run through the ``signmix`` command as a user would:
the exit status (2 for usage errors, 1 for runtime failures), a message that names the
problem (and the fix where there is one), no traceback unless ``--debug``, a short stderr,
and nothing left behind: no new file anywhere in the case's folder, no staging folder in
the adapter store, no MLflow run left RUNNING. Most cases fail in validation or in the
preflight checks, before any Ray cluster starts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from tests_support import run_signmix as signmix  # the command, forked from a server that imported it once
from tests_support import write_config

DOMAINS = ("books", "support")
MAX_STDERR_LINES = 15



@pytest.fixture(scope="module")
def trained_store(tmp_path_factory, shared_store, tiny_bert, demo_domains) -> Path:
    """A folder with two trained adapters (books, support), its MLflow experiment and a config;
    each case copies it before breaking it. The adapters are the session's shared store's (trained
    with the same settings: ``signmix train`` finds them and trains nothing)."""
    from search.settings.config import load_config
    from search.tracking.tracker import open_config_experiment
    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("trained")
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains={d: demo_domains[d] for d in DOMAINS},
                                   targets=["books"]))
    for d in DOMAINS:
        shutil.copytree(Path(shared_store) / d, Path(cfg.store_path) / d)
    summary = run_training(cfg)
    assert sorted(summary.skipped) == sorted(DOMAINS) and not summary.trained and not summary.failed
    open_config_experiment(cfg)
    assert not _running_runs(folder / "runs" / "mlflow.db")
    return folder


@dataclass
class Env:
    """A case's folder, and helpers that build its (bad) situation there."""

    tmp: Path
    tiny_bert: str
    domains: dict[str, Path]
    template: Path | None = None

    def config(self, *, domain_settings: dict | None = None, **overrides) -> Path:
        """A config for books + support (target books) in the case's folder; ``domain_settings``
        adds keys to a domain's entry (``{"books": {"label_column": "stars"}}``)."""
        path = write_config(self.tmp, base_model=self.tiny_bert, domains={d: self.domains[d] for d in DOMAINS},
                            targets=["books"], **overrides)
        if domain_settings:
            raw = yaml.safe_load(path.read_text())
            for domain, settings in domain_settings.items():
                raw["domains"][domain].update(settings)
            path.write_text(yaml.safe_dump(raw))
        return path

    def trained(self, **overrides) -> Path:
        """The module's trained store and MLflow runs copied into the case's folder, and a config for them."""
        assert self.template is not None, "mark the case with needs_store=True"
        for part in ("adapters", "runs"):
            shutil.copytree(self.template / part, self.tmp / part)
        return self.config(**overrides)

    def data(self, domain: str) -> Path:
        """A private copy of a demo domain's data folder, to break."""
        dest = self.tmp / "data" / domain
        shutil.copytree(self.domains[domain], dest)
        self.domains = {**self.domains, domain: dest}
        return dest

    def a_file(self) -> Path:
        """A regular file: a folder below it can be neither created nor written (we run as root)."""
        path = self.tmp / "file.txt"
        path.write_text("not a folder")
        return path

    def edit_meta(self, domain: str, **changes) -> None:
        path = self.tmp / "adapters" / domain / "signmix.json"
        meta = json.loads(path.read_text())
        meta.update(changes)
        path.write_text(json.dumps(meta))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rewrite_jsonl(path: Path, change: Callable[[int, dict], dict]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(change(i, r)) + "\n" for i, r in enumerate(rows)))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- the bad situations -----------------------------------------------------------------------
# Each returns the config path; the CLI args below may use {cfg} and {tmp}.

def _target_not_a_domain(env):
    return env.config(search={"targets": ["dvd"]})


def _no_targets(env):
    return env.config(search={"targets": []})


def _max_members_zero(env):
    return env.config(search={"max_members": 0})


def _prune_ratio_one(env):
    return env.config(search={"prune_ratios": [0.0, 1.0]})


def _prune_ratio_negative(env):
    return env.config(search={"prune_ratios": [-0.1]})


def _refit_without_training_split(env):
    (env.data("books") / "train.jsonl").unlink()
    return env.config(search={"head": "refit"})


def _unknown_top_level_key(env):
    return env.config(trainig={"epochs": 1})


def _unknown_nested_key(env):
    return env.config(search={"strategi": "tpe"})


def _invalid_yaml(env):
    path = env.tmp / "signmix.yaml"
    path.write_text("name: x\nsearch: {targets: [books\n")
    return path


def _base_model_not_a_folder(env):
    env.tiny_bert = str(env.tmp / "no-such-model")
    return env.config()


def _no_label_column(env):
    return env.config(domain_settings={"books": {"label_column": "stars"}})


def _empty_split(env):
    (env.data("books") / "validation.jsonl").write_text("")
    return env.config()


def _missing_split(env):
    (env.data("books") / "validation.jsonl").unlink()
    return env.config()


def _blank_texts(env):
    _rewrite_jsonl(env.data("support") / "train.jsonl", lambda i, r: {**r, "text": "  "})
    return env.config()


def _tracking_unreachable(env):
    return env.config(mlflow={"tracking_uri": f"http://127.0.0.1:{_free_port()}"})


def _ray_unreachable(env):
    return env.config(ray={"storage_path": str(env.tmp / "runs"), "address": "ray://127.0.0.1:1"})


def _storage_unwritable(env):
    return env.config(ray={"storage_path": str(env.a_file() / "runs")})


def _store_unwritable(env):
    return env.config(store=str(env.a_file() / "adapters"))


def _export_into_non_empty(env):
    (env.tmp / "taken").mkdir()
    (env.tmp / "taken" / "mine.txt").write_text("keep")
    return env.config()


def _export_unwritable(env):
    env.a_file()
    return env.config()


def _a_valid_config(env):
    return env.config()


def _mixed_architectures(env):
    cfg = env.trained()
    env.edit_meta("support", adapter={"method": "seq_bn", "reduction_factor": 8, "rank": 8, "alpha": 8.0})
    return cfg


def _mixed_methods(env):
    cfg = env.trained()
    env.edit_meta("support", adapter={"method": "lora", "reduction_factor": 4, "rank": 8, "alpha": 8.0})
    return cfg


def _mixed_base_models(env):
    cfg = env.trained()
    env.edit_meta("support", base_model="roberta-base")
    return cfg


def _config_base_model_differs(env):
    cfg = env.trained()
    other = env.tmp / "other-bert"
    shutil.copytree(env.tiny_bert, other)
    raw = yaml.safe_load(cfg.read_text())
    raw["base_model"] = str(other)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _missing_adapter_file(env):
    cfg = env.trained()
    (env.tmp / "adapters" / "support" / "adapter.safetensors").unlink()
    return cfg


def _truncated_adapter_file(env):
    cfg = env.trained()
    _truncate(env.tmp / "adapters" / "books" / "adapter.safetensors")
    return cfg


def _truncated_head_file(env):
    cfg = env.trained()
    _truncate(env.tmp / "adapters" / "books" / "model_head.safetensors")
    return cfg


def _labels_outside_head(env):
    # books' head has 2 classes; its validation data now also has a label 2.
    _rewrite_jsonl(env.data("books") / "validation.jsonl", lambda i, r: {**r, "label": 2} if i % 5 == 0 else r)
    return env.trained()


def _no_label_column_at_search(env):
    return env.trained(domain_settings={"books": {"label_column": "stars"}})


def _export_before_search(env):
    return env.trained()


def _ray_unreachable_with_store(env):
    return env.trained()


def _fsd_out_unwritable(env):
    env.a_file()
    return env.trained()


# --- bring your own adapters (domains.<d>.adapter): checked before anything is written ---------

def _users_adapter(env, *, reduction_factor: int = 4, safetensors: bool = True, base: str | None = None) -> Path:
    """A seq_bn adapter with its head, saved by plain `adapters` code into the case's folder."""
    from adapters import AutoAdapterModel, SeqBnConfig

    folder = env.tmp / "users" / "support"
    folder.mkdir(parents=True)
    model = AutoAdapterModel.from_pretrained(base or env.tiny_bert)
    model.add_adapter("theirs", config=SeqBnConfig(reduction_factor=reduction_factor))
    model.add_classification_head("theirs", num_labels=3)
    model.save_adapter(str(folder), "theirs", use_safetensors=safetensors)
    return folder


def _importing(env, folder: Path, **source):
    return env.config(domain_settings={"support": {"adapter": {"path": str(folder), **source}}})


def _imported_pickle_only(env):
    return _importing(env, _users_adapter(env, safetensors=False))


def _imported_other_architecture(env):
    return _importing(env, _users_adapter(env, reduction_factor=8))


def _imported_other_base_model(env):
    from transformers import BertConfig, BertModel

    other = env.tmp / "wider-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(other)
    return _importing(env, _users_adapter(env, base=str(other)))


def _imported_truncated(env):
    folder = _users_adapter(env)
    _truncate(folder / "adapter.safetensors")
    return _importing(env, folder)


def _imported_target_without_data(env):
    cfg = env.config(search={"targets": ["support"]})
    raw = yaml.safe_load(cfg.read_text())
    raw["domains"]["support"] = {"adapter": {"path": str(env.tmp / "users" / "support")}}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


# --- serving plans and their bundles (issue 17) ----------------------------------------------

def _plan_domain_without_data(env):
    cfg = env.config(plan={"domains": ["books", "support"]})
    raw = yaml.safe_load(cfg.read_text())
    raw["domains"]["support"] = {"adapter": {"path": str(env.tmp / "users" / "support")}}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _bundle(env, *, body: str = "bodies/books", head: str = "heads/books") -> Path:
    """A bundle whose routing names ``body`` and ``head`` for books; only bodies/books and heads/books exist."""
    folder = env.tmp / "bundle"
    for sub, files in (("bodies/books", ("adapter_config.json", "adapter.safetensors", "mixture.json")),
                       ("heads/books", ("head_config.json", "model_head.safetensors"))):
        (folder / sub).mkdir(parents=True)
        for name in files:
            (folder / sub / name).write_text("{}")
    (folder / "routing.json").write_text(json.dumps({"base_model": env.tiny_bert,
                                                     "domains": {"books": {"body": body, "head": head}}}))
    (folder / "plan.json").write_text(json.dumps({"served": {}}))
    return env.config()


# --- conflict measures (issue 18) ----------------------------------------------------------------

def _delta_fsd_on_imported(env):
    cfg = env.trained()
    env.edit_meta("support", source={"kind": "path", "location": "/elsewhere/support"})
    return cfg


def _probe_split_missing(env):
    # cross_head scores every domain's head on that domain's probe rows, so support's are read
    # (activation_fsd alone reads only the target's)
    env.trained()
    (env.data("support") / "test.jsonl").unlink()
    return env.config(search={"probe_split": "test", "conflict_measure": "cross_head"})


# a new domain with a few labelled examples (issue 19): books is data-only (train: false)
def _data_only(env, books: dict | None = None, **overrides):
    return env.config(domain_settings={"books": {"train": False, **(books or {})}}, **overrides)


def _data_only_without_train_file(env):
    (env.data("books") / "train.jsonl").unlink()
    return _data_only(env, search={"head": "refit"})


def _fewer_examples_than_classes(env):
    path = env.config(domain_settings={"support": {"train": False, "max_train_examples": 2}},
                      search={"targets": ["support"], "head": "refit"})
    return path


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Env], Path]
    args: tuple[str, ...]
    code: int
    message: str
    needs_store: bool = False
    traceback: bool = False


def _wordnet_folder_not_a_database(env):
    (env.tmp / "wordnet").mkdir()
    return env.config(search={"blackbox_attack": {"synonyms": "wordnet", "wordnet_folder": "wordnet"}})


CASES = [
    # the black-box attack (issue 21)
    Case("blackbox-unknown-synonyms", lambda env: env.config(search={"blackbox_attack": {"synonyms": "glove"}}),
         ("search", "{cfg}"), 2, "search.blackbox_attack.synonyms: got 'glove': Input should be 'embedding' or 'wordnet'"),
    Case("blackbox-wordnet-missing", lambda env: env.config(search={"blackbox_attack": {
        "synonyms": "wordnet", "wordnet_folder": "/no/such/wordnet"}}), ("search", "{cfg}"), 2, "search.blackbox_attack.wordnet_folder '/no/such/wordnet' does not exist: "
         "install it with 'apt-get install wordnet-base wordnet-sense-index'"),
    Case("blackbox-wordnet-not-a-database", _wordnet_folder_not_a_database, ("search", "{cfg}"), 2, "wordnet' is not a WordNet database (it needs index.noun, "),
    Case("blackbox-query-budget", lambda env: env.config(search={"blackbox_attack": {"query_budget": 1}}),
         ("search", "{cfg}"), 2, "search.blackbox_attack.query_budget: got 1: Input should be greater than or equal to 2"),
    Case("blackbox-word-share", lambda env: env.config(search={"blackbox_attack": {"max_word_share": 0}}),
         ("search", "{cfg}"), 2, "search.blackbox_attack.max_word_share: got 0: Input should be greater than 0"),
    Case("blackbox-objective-without-attack", lambda env: env.config(search={
        "objectives": ["accuracy", "bb_robust_accuracy"]}), ("search", "{cfg}"), 2, "objectives includes bb_robust_accuracy, which needs search.blackbox_attack"),
    Case("blackbox-two-robustness-objectives", lambda env: env.config(search={
        "fgsm_step": 0.01, "blackbox_attack": {}, "objectives": ["accuracy", "robust_accuracy", "bb_robust_accuracy"]}),
         ("search", "{cfg}"), 2, "keep one of ['robust_accuracy', 'bb_robust_accuracy']"),
    # the config file
    Case("target-not-a-domain", _target_not_a_domain, ("search", "{cfg}"), 2,
         "search.targets ['dvd'] are not domains; the domains are ['books', 'support']"),
    Case("empty-subset-no-targets", _no_targets, ("search", "{cfg}"), 2,
         "search.targets: got []: name at least one target domain"),
    Case("empty-subset-max-members-0", _max_members_zero, ("search", "{cfg}"), 2,
         "search.max_members: got 0: Input should be greater than or equal to 1"),
    Case("prune-ratio-1", _prune_ratio_one, ("search", "{cfg}"), 2,
         "search.prune_ratios.1: got 1.0: Input should be less than 1"),
    Case("prune-ratio-negative", _prune_ratio_negative, ("search", "{cfg}"), 2,
         "search.prune_ratios.0: got -0.1: Input should be greater than or equal to 0"),
    # a data-only domain (issue 19)
    Case("data-only-domain-as-member", lambda env: _data_only(env, search={"head": "refit", "require_targets": True}),
         ("train", "{cfg}"), 2, "search.require_targets: got true, which makes every target a member, but target "
         "'books' is data-only (train: false) and is never a member: set search.require_targets: false"),
    Case("data-only-target-with-own-head", _data_only, ("search", "{cfg}"), 2,
         "search.head: got 'own', but target 'books' is data-only (train: false) and has no adapter of its own, "
         "hence no trained head: set search.head: refit"),
    Case("data-only-domain-without-train-split",
         lambda env: _data_only(env, books={"splits": {"validation": "validation", "test": "test"}},
                                search={"head": "refit"}), ("train", "{cfg}"), 2,
         "train: false declares a data-only domain, whose few labelled examples are its training split, but splits "
         "has none (got ['test', 'validation']): add splits.train"),
    Case("data-only-domain-without-train-file", _data_only_without_train_file, ("train", "{cfg}"), 2,
         "domains.books: data-only (train: false), so its few labelled examples are its training split, which "
         "cannot be read"),
    Case("fewer-labelled-examples-than-classes", _fewer_examples_than_classes, ("train", "{cfg}"), 2,
         "domains.support.max_train_examples: got 2 labelled example(s) for data-only domain 'support', fewer than "
         "its 3 classes; a refit head needs at least one per class: allowed: 3 or more"),
    # merge operators, weights and head protocols (issue 9)
    Case("unknown-merge-operator", lambda env: env.config(search={"merge_methods": ["average", "magic"]}),
         ("search", "{cfg}"), 2, "search.merge_methods.1: got 'magic': Input should be 'average', "
                                 "'task_arithmetic', 'ties', 'dare_linear' or 'dare_ties'"),
    Case("density-outside-0-1", lambda env: env.config(search={"merge_methods": ["ties"], "densities": [0.0]}),
         ("search", "{cfg}"), 2, "search.densities.0: got 0.0: Input should be greater than 0"),
    Case("density-above-1", lambda env: env.config(search={"densities": [1.5]}),
         ("search", "{cfg}"), 2, "search.densities.0: got 1.5: Input should be less than or equal to 1"),
    Case("drop-rate-1", lambda env: env.config(search={"merge_methods": ["dare_ties"], "drop_rates": [1.0]}),
         ("search", "{cfg}"), 2, "search.drop_rates.0: got 1.0: Input should be less than 1"),
    Case("lambda-not-positive", lambda env: env.config(search={"lambdas": [1.0, 0]}),
         ("search", "{cfg}"), 2, "search.lambdas.1: got 0: Input should be greater than 0"),
    Case("searched-weights-with-exhaustive", lambda env: env.config(search={"weights": "searched"}),
         ("search", "{cfg}"), 2, "search.weights: got 'searched': exhaustive cannot enumerate a continuous space"),
    Case("batches-with-early-stopping",
         lambda env: env.config(search={"mixtures_per_trial": 4, "early_stopping": True, "eval_chunks": 2}),
         ("search", "{cfg}"), 2, "early_stopping stops a trial, which would stop every mixture of its batch: "
                                 "set mixtures_per_trial: 1, or early_stopping: false"),
    Case("refit-without-training-split", _refit_without_training_split, ("search", "{cfg}"), 2,
         "search.head: got 'refit', which fits each target's head on its training split, but target 'books' "
         "has no usable one"),
    Case("unknown-key", _unknown_top_level_key, ("train", "{cfg}"), 2,
         "trainig: unknown key; did you mean 'training'?"),
    Case("unknown-nested-key", _unknown_nested_key, ("search", "{cfg}"), 2,
         "search.strategi: unknown key; did you mean 'strategy'?"),
    Case("invalid-yaml", _invalid_yaml, ("search", "{cfg}"), 2, "not valid YAML"),
    Case("missing-config", lambda env: env.tmp / "nope.yaml", ("train", "{cfg}"), 2, "no such file; create one"),
    Case("num-mixtures-0-on-the-command-line", _a_valid_config, ("search", "{cfg}", "--num-mixtures", "0"), 2,
         "search.num_mixtures: got 0: Input should be greater than or equal to 1"),
    Case("debug-shows-the-traceback", _target_not_a_domain, ("--debug", "search", "{cfg}"), 2,
         "are not domains", traceback=True),
    # data
    Case("base-model-not-a-folder", _base_model_not_a_folder, ("train", "{cfg}"), 2,
         "no-such-model is not a folder; set base_model to a local model folder or a Hugging Face hub id"),
    Case("no-label-column", _no_label_column, ("train", "{cfg}"), 2,
         "no column 'stars'; the columns are ['text', 'label']. Set domains.books.label_column to one of them"),
    Case("empty-split", _empty_split, ("train", "{cfg}"), 2, "validation.jsonl is empty; add examples to it"),
    Case("missing-split", _missing_split, ("train", "{cfg}"), 2,
         "split 'validation': folder"),
    Case("split-of-blank-texts", _blank_texts, ("train", "{cfg}"), 2,
         "domain 'support', split 'train' has no rows with text in column 'text'"),
    # places: MLflow, Ray, folders
    Case("tracking-uri-unreachable", _tracking_unreachable, ("train", "{cfg}"), 1,
         "cannot be reached: [Errno 111] Connection refused; start it with `signmix server` or fix mlflow.tracking_uri"),
    Case("ray-client-address", _ray_unreachable, ("train", "{cfg}"), 2,
         "ray.address 'ray://127.0.0.1:1' is a Ray Client address, which signmix does not use"),
    Case("ray-address-option-unreachable", _a_valid_config, ("train", "{cfg}", "--address", "127.0.0.1:1"), 2,
         "cannot connect to the Ray cluster at '127.0.0.1:1': nothing answers at 127.0.0.1:1"),
    Case("storage-path-unwritable", _storage_unwritable, ("train", "{cfg}"), 2,
         "file.txt is a file, not a folder; set ray.storage_path to a writable folder"),
    Case("store-unwritable", _store_unwritable, ("train", "{cfg}"), 2,
         "the adapter store"),
    Case("export-into-non-empty-folder", _export_into_non_empty, ("export", "{cfg}", "--out", "{tmp}/taken"), 2,
         "exists and is not empty; choose a new --out or remove it"),
    Case("export-folder-unwritable", _export_unwritable, ("export", "{cfg}", "--out", "{tmp}/file.txt/best"), 2,
         "file.txt is a file, not a folder; choose another --out"),
    Case("search-before-training", _a_valid_config, ("search", "{cfg}"), 2,
         "run `signmix train CONFIG` first"),
    Case("evaluate-not-an-export", lambda env: env.tmp, ("evaluate", "{tmp}"), 2, "is not a signmix export"),
    # a trained store, then broken
    Case("adapters-of-different-architectures", _mixed_architectures, ("fsd", "{cfg}"), 2,
         "adapters 'books' and 'support' cannot be mixed: their adapter method/config differ", needs_store=True),
    Case("adapters-of-different-methods", _mixed_methods, ("search", "{cfg}"), 2,
         "cannot be mixed: their adapter method/config differ", needs_store=True),
    Case("adapters-of-different-base-models", _mixed_base_models, ("search", "{cfg}"), 2,
         "cannot be mixed: their base model differ", needs_store=True),
    Case("config-base-model-differs-from-store", _config_base_model_differs, ("search", "{cfg}"), 2,
         "the stored adapters were trained on base model", needs_store=True),
    Case("missing-safetensors", _missing_adapter_file, ("search", "{cfg}"), 2,
         "adapter.safetensors is missing: the adapter of 'support' is incomplete", needs_store=True),
    Case("truncated-safetensors", _truncated_adapter_file, ("fsd", "{cfg}"), 2,
         "the file is truncated or corrupt: run `signmix train CONFIG --force` to retrain 'books'", needs_store=True),
    Case("truncated-head-safetensors", _truncated_head_file, ("search", "{cfg}"), 2,
         "model_head.safetensors cannot be read", needs_store=True),
    Case("labels-outside-the-head", _labels_outside_head, ("search", "{cfg}"), 2,
         "labels in split 'validation' go up to 2 but the head has 2 classes", needs_store=True),
    Case("no-label-column-at-search", _no_label_column_at_search, ("search", "{cfg}"), 2,
         "no column 'stars'", needs_store=True),
    Case("ray-address-unreachable-at-search", _ray_unreachable_with_store, ("search", "{cfg}", "--address",
                                                                            "127.0.0.1:1"), 2,
         "cannot connect to the Ray cluster at '127.0.0.1:1'", needs_store=True),
    Case("export-before-search", _export_before_search, ("export", "{cfg}", "--out", "{tmp}/best"), 1,
         "the experiment has no evaluated mixture yet; run `signmix search CONFIG` first", needs_store=True),
    Case("export-unknown-run-id", _export_before_search, ("export", "{cfg}", "--out", "{tmp}/best", "--run-id",
                                                          "0123456789abcdef"), 2,
         "no MLflow run '0123456789abcdef'", needs_store=True),
    Case("fsd-out-unwritable", _fsd_out_unwritable, ("fsd", "{cfg}", "--out", "{tmp}/file.txt/fsd.csv"), 2,
         "file.txt is a file, not a folder; pass --out with a writable path", needs_store=True),
    # conflict measures (issue 18)
    Case("unknown-measure", _a_valid_config, ("fsd", "{cfg}", "--measures", "weight_fsd,cka"), 2,
         "--measures: unknown measure 'cka'; the measures are weight_fsd, delta_fsd, activation_fsd, cross_head, "
         "merge_gap (or all)"),
    Case("unknown-conflict-measure", lambda env: env.config(search={"conflict_measure": "cka"}), ("search", "{cfg}"),
         2, "search.conflict_measure: got 'cka': Input should be 'auto', 'weight_fsd', 'delta_fsd', 'activation_fsd' "
            "or 'cross_head'"),
    Case("probe-size-out-of-range", lambda env: env.config(search={"probe_size": 4}), ("fsd", "{cfg}"), 2,
         "search.probe_size: got 4: Input should be greater than or equal to 8"),
    Case("probe-size-too-large", lambda env: env.config(search={"probe_size": 100000}), ("search", "{cfg}"), 2,
         "search.probe_size: got 100000: Input should be less than or equal to 4096"),
    Case("auto-measure-with-a-fixed-threshold",
         lambda env: env.config(search={"conflict_measure": "auto", "max_fsd": 0.3}), ("search", "{cfg}"), 2,
         "conflict_measure: auto chooses its measure from the evidence, so a fixed max_fsd (0.3) has no measure to "
         "apply to: set max_fsd: auto (or null), or name the measure in conflict_measure"),
    Case("probe-split-unknown", lambda env: env.config(search={"probe_split": "unlabelled"}), ("fsd", "{cfg}"), 2,
         "search.probe_split: got 'unlabelled': Input should be 'train', 'validation' or 'test'"),
    Case("delta-fsd-on-imported-adapters", _delta_fsd_on_imported, ("fsd", "{cfg}", "--measures", "delta_fsd"), 2,
         "measure delta_fsd compares each adapter's delta from the adapters' shared initialisation, but ['support'] "
         "were imported and did not start from the config's seed; leave delta_fsd out", needs_store=True),
    Case("probe-split-a-domain-lacks", _probe_split_missing, ("fsd", "{cfg}", "--measures", "cross_head"), 2,
         "search.probe_split is 'test', but domain 'support' cannot give it", needs_store=True),
    Case("probe-split-a-domain-lacks-at-search", _probe_split_missing, ("search", "{cfg}"), 2,
         "search.probe_split is 'test', but domain 'support' cannot give it", needs_store=True),
    # bring your own adapters (issue 11): refused by `signmix train` before anything is written
    Case("imported-pickle-only", _imported_pickle_only, ("train", "{cfg}"), 2,
         "pytorch_adapter.bin (no adapter.safetensors); opening a pickle can run any code it carries, so signmix "
         "refuses it. Fix: convert it to adapter.safetensors, or, if you trust where it comes from, set "
         "`allow_pickle: true` for this adapter"),
    Case("imported-other-architecture", _imported_other_architecture, ("train", "{cfg}"), 2,
         "their reduction factor (reduction_factor) is 4 in 'books' but 8 in 'support'; mix bottleneck adapters "
         "of one reduction factor"),
    Case("imported-other-base-model", _imported_other_base_model, ("train", "{cfg}"), 2,
         "adapter 'support' was trained for another base model: its hidden_size is 48"),
    Case("imported-truncated-safetensors", _imported_truncated, ("train", "{cfg}"), 2,
         "the file is truncated, corrupt or not plain tensors: copy the adapter again from its source"),
    Case("imported-target-without-data", _imported_target_without_data, ("search", "{cfg}"), 2,
         "targets ['support'] name an adapter but no data"),
    # serving plans and bundles (issue 17)
    Case("plan-of-one-domain", lambda env: env.config(plan={"domains": ["books"]}), ("plan", "{cfg}"), 2,
         "plan.domains: got ['books']: a plan serves at least 2 domains, got ['books']; name 2 or more, or leave "
         "plan.domains out to serve every domain with data"),
    Case("plan-max-bodies-above-the-domains", lambda env: env.config(plan={"max_bodies": 3}), ("plan", "{cfg}"), 2,
         "plan.max_bodies: got 3, but the plan serves 2 domains; set plan.max_bodies between 1 and 2, or leave it out"),
    Case("plan-max-bodies-0", lambda env: env.config(plan={"max_bodies": 0}), ("plan", "{cfg}"), 2,
         "plan.max_bodies: got 0: Input should be greater than or equal to 1"),
    Case("plan-tolerance-below-0", lambda env: env.config(plan={"tolerance": -0.01}), ("plan", "{cfg}"), 2,
         "plan.tolerance: got -0.01: Input should be greater than or equal to 0"),
    Case("plan-domain-without-data", _plan_domain_without_data, ("plan", "{cfg}"), 2,
         "plan.domains ['support'] name an adapter but no data; a served domain needs data to be evaluated: give "
         "domains.support.path (or hub), or take 'support' out of plan.domains"),
    Case("bundle-routing-names-a-missing-body", lambda env: _bundle(env, body="bodies/books+kitchen"),
         ("evaluate", "{tmp}/bundle"), 2,
         "routing.json: domains.books.body is 'bodies/books+kitchen', but "),
    Case("bundle-routing-names-a-missing-head", lambda env: _bundle(env, head="heads/kitchen"),
         ("evaluate", "{tmp}/bundle", "--split", "test"), 2,
         "lacks head_config.json, model_head.safetensors; export the plan again with `signmix export CONFIG --plan "
         "--out DIR`, or fix the routing"),
    Case("export-bodies-without-plan", _a_valid_config, ("export", "{cfg}", "--out", "{tmp}/b", "--bodies", "2"), 2,
         "--bodies chooses a plan of the front: use it with --plan"),
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _running_runs(db: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, filter_string="attributes.status = 'RUNNING'"))


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.integration] if c.needs_store else []) for c in CASES])
def test_bad_input_gets_one_clear_error_and_leaves_nothing_behind(case, tmp_path, request, tiny_bert, demo_domains):
    env = Env(tmp=tmp_path, tiny_bert=tiny_bert, domains=dict(demo_domains),
              template=request.getfixturevalue("trained_store") if case.needs_store else None)
    cfg = case.setup(env)
    db = tmp_path / "runs" / "mlflow.db"
    before = _files(tmp_path)
    running_before = _running_runs(db) if db.exists() else []

    out = signmix(*(a.format(cfg=cfg, tmp=tmp_path) for a in case.args), cwd=tmp_path)

    assert out.returncode == case.code, out.stderr[-3000:]
    assert case.message in out.stderr, out.stderr[-3000:]
    if case.traceback:
        assert "Traceback" in out.stderr
        return
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) < MAX_STDERR_LINES, out.stderr
    assert out.stderr.startswith("signmix: error: "), out.stderr
    # Nothing half-written: no new file or folder anywhere in the case's folder (export
    # targets, staging folders, the MLflow store, Ray's run folders all live there) ...
    assert _files(tmp_path) - before == set()
    assert not list((tmp_path / "adapters").glob(".tmp-*"))
    # ... and no MLflow run opened and left RUNNING.
    if db.exists():
        assert _running_runs(db) == running_before == []
