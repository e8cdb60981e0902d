"""Training never replaces, without --force, an adapter that another config made under other
settings: a store is keyed by domain name, and other configs, their MLflow runs and their bundles
read that adapter (found by a user: a new-domain config's 16-example baseline trained over the
400-example adapter a plan and its bundle were built from)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from search.settings.config import load_config
from search.workflows.adapter_training import run_training
from spaces.errors import UsageError
from tests_support import run_signmix, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def first_store(tmp_path, shared_store):
    """A copy of the shared store: the first config's adapters (a test may not write the shared one)."""
    store = tmp_path / "store"
    shutil.copytree(shared_store, store, ignore=shutil.ignore_patterns(".correctness", ".measures"))
    return store


@pytest.mark.parametrize("second", [
    {"training": {"epochs": 2}},  # the same domain, trained under other settings
    {"domains": {"train": False, "max_train_examples": 16, "draw_seed": 0}},  # a new domain's 16-example baseline
], ids=["other-settings", "data-only-baseline"])
def test_a_second_config_cannot_replace_the_first_configs_adapter(tmp_path, tiny_bert, demo_domains, first_store,
                                                                   second):
    books = first_store / "books"
    before = _digest(books)
    folder = tmp_path / "second"
    folder.mkdir()
    domains = {d: demo_domains[d] for d in ("books", "movies", "kitchen")}
    path = write_config(folder, base_model=tiny_bert, domains=domains, targets=["books"], store=str(first_store),
                        **({"training": {**second["training"], "learning_rate": 5e-3, "batch_size": 16,
                                         "max_length": 32, "seed": 0}} if "training" in second else {}))
    if "domains" in second:  # books becomes data-only: its baseline is trained on a few examples
        raw = yaml.safe_load(path.read_text())
        raw["domains"]["books"].update(second["domains"])
        raw["search"]["head"] = "refit"
        path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    with pytest.raises(UsageError, match=r"domain 'books'.*already holds an adapter of that name made under other "
                                         r"settings \(trained on \d+ examples.*pass --force to replace it"):
        run_training(cfg)
    assert _digest(books) == before  # nothing written
    run = run_signmix("train", str(path), cwd=REPO, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and "--force" in run.stderr
    assert _digest(books) == before


def test_the_same_settings_still_skip_and_force_still_replaces(tmp_path, tiny_bert, demo_domains, first_store):
    domains = {d: demo_domains[d] for d in ("books", "movies")}
    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
                                   store=str(first_store)))
    assert sorted(run_training(cfg).skipped) == ["books", "movies"]
    other = load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books"],
                                     store=str(first_store), training={"epochs": 2, "learning_rate": 5e-3,
                                                                       "batch_size": 16, "max_length": 32, "seed": 0}))
    before = _digest(first_store / "movies")
    summary = run_training(other, force=True)
    assert sorted(summary.trained) == ["books", "movies"] and not summary.failed
    assert _digest(first_store / "movies") != before
