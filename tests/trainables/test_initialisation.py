"""The shared initialisation: rebuilt exactly as training starts, cached in the store, checked against it."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from tests_support import make_experiment

from spaces.errors import StoreError
from trainables.initialisation import check_init_matches, init_cache_path, initial_adapter_weights


def _experiment(base_model: str, store, *, seed: int = 0, reduction_factor: int = 4):
    return make_experiment(base_model, store, seed=seed, reduction_factor=reduction_factor)


def _adapter_as_training_starts_it(experiment) -> dict:
    """trainables/train.py's steps up to the first optimizer step, then saved as training saves it."""
    from safetensors.torch import load_file

    from trainables.model import adapter_config_for, load_encoder
    from trainables.store import ADAPTER_FILE, ADAPTER_NAME

    model, _ = load_encoder(experiment.base_model)
    torch.manual_seed(experiment.training.seed)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(experiment.adapter))
    model.add_classification_head(ADAPTER_NAME, num_labels=2, id2label={0: "a", 1: "b"})
    model.train_adapter(ADAPTER_NAME)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, ADAPTER_NAME, use_safetensors=True)
        return load_file(os.path.join(folder, ADAPTER_FILE))


def test_rebuilt_init_is_where_training_starts_and_is_cached(tiny_bert, tmp_path):
    experiment = _experiment(tiny_bert, tmp_path / "adapters")
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    init = initial_adapter_weights(experiment)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone

    cached = init_cache_path(experiment)
    assert cached.parent == tmp_path / "adapters" / ".init" and cached.is_file()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left
    again = initial_adapter_weights(experiment)
    assert set(again) == set(init)
    assert all(torch.equal(init[k], again[k]) for k in init)

    started = _adapter_as_training_starts_it(experiment)
    assert set(started) == set(init) and len(init) == 8  # 2 layers x (down, up) x (weight, bias)
    assert all(torch.equal(init[k], started[k]) for k in init)
    assert any(init[k].abs().sum() > 0 for k in init)

    other_seed = initial_adapter_weights(_experiment(tiny_bert, tmp_path / "adapters", seed=1))
    assert not all(torch.equal(init[k], other_seed[k]) for k in init)
    assert len(list(cached.parent.iterdir())) == 2  # one cache file per seed


def test_unreadable_cache_is_rebuilt(tiny_bert, tmp_path):
    experiment = _experiment(tiny_bert, tmp_path)
    init = initial_adapter_weights(experiment)
    init_cache_path(experiment).write_bytes(b"truncated")
    rebuilt = initial_adapter_weights(experiment)
    assert all(torch.equal(init[k], rebuilt[k]) for k in init)
    assert initial_adapter_weights(experiment).keys() == init.keys()  # the file was rewritten, readable


def test_store_defaults_to_the_experiments_store_path(tiny_bert, tmp_path):
    from search.settings.config import validate_config

    cfg = validate_config({"name": "x", "base_model": tiny_bert, "domains": {"books": {"path": str(tmp_path)}},
                           "search": {"targets": ["books"]}, "ray": {"storage_path": str(tmp_path / "runs")}})
    assert init_cache_path(cfg.experiment()).parent == tmp_path / "runs" / "adapters" / ".init"


def test_init_of_another_architecture_is_refused_with_a_store_error(tiny_bert, tmp_path):
    init = initial_adapter_weights(_experiment(tiny_bert, tmp_path, reduction_factor=4))
    wider = initial_adapter_weights(_experiment(tiny_bert, tmp_path, reduction_factor=2))
    check_init_matches(init, init, "books")
    with pytest.raises(StoreError, match=r"the adapter of 'books' has shape \(16,\) for "
                                         r"'bert.encoder.layer.0.output.adapters.signmix.adapter_down.0.bias'"
                                         r" but the config's base_model and adapter settings build \(8,\)"):
        check_init_matches(init, wider, "books")
    missing = dict(init)
    key = sorted(missing)[0]
    del missing[key]
    with pytest.raises(StoreError, match=f"{key!r} is only in the rebuilt initialisation; 1 such names"):
        check_init_matches(init, missing, "books")
