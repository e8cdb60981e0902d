"""A data-only domain in the config (issue 19): what it defaults to, and that the stores trained
before these settings existed keep their fingerprints (no adapter is retrained on upgrade)."""

from __future__ import annotations

import hashlib
import json

from search.settings.config import validate_config
from search.workflows.adapter_training import fingerprint


def raw(**domains) -> dict:
    return {"name": "x", "base_model": "m", "domains": {"a": {"path": "/a"}, "b": {"path": "/b"}, **domains},
            "ray": {"storage_path": "/tmp/x"}}


def test_a_data_only_target_is_not_required_in_its_mixtures_nor_a_member():
    cfg = validate_config({**raw(new={"path": "/n", "train": False, "max_train_examples": 16}),
                           "search": {"targets": ["new"], "head": "refit"}})
    assert not cfg.search.require_targets and cfg.member_domains == ["a", "b"] and cfg.data_only_domains == ["new"]
    assert cfg.plan_domains == ["a", "b"] and cfg.study_targets == ["a", "b"]
    assert cfg.search.adaptersoup_k == 3


def test_a_domain_without_the_new_settings_keeps_the_fingerprint_it_had():
    cfg = validate_config(raw())
    before = json.dumps({"base_model": cfg.base_model, "adapter": cfg.adapter.model_dump(),
                         "training": cfg.training.model_dump(),
                         "domain": cfg.domains["a"].model_dump(exclude={"adapter", "train", "max_train_examples",
                                                                         "draw_seed", "epochs"})}, sort_keys=True)
    assert fingerprint(cfg, "a") == hashlib.sha256(before.encode()).hexdigest()[:16]
    few = validate_config(raw(a={"path": "/a", "max_train_examples": 16}))
    assert fingerprint(few, "a") != fingerprint(cfg, "a")
