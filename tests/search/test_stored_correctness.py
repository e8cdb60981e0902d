"""Evaluations kept in the store (``<store>/.correctness``): a mixture evaluated on a split by one
confirmation or plan is read, not evaluated, by the next; a changed adapter or data file, another
split or another mixture is evaluated. Real Ray trials on the tiny BERT's adapters."""

from __future__ import annotations

import os
import shutil

import pytest

from search.config import load_config
from search.stored_correctness import CORRECTNESS_DIR, StoredCorrectness
from spaces.spec import make_mixture_spec
from tests_support import write_config


@pytest.fixture
def cfg(tmp_path, tiny_bert, demo_domains, shared_store):
    """The shared store's adapters in a store of the test's own (its cache starts empty)."""
    store = tmp_path / "adapters"
    shutil.copytree(shared_store, store, ignore=shutil.ignore_patterns(CORRECTNESS_DIR))
    domains = {d: tmp_path / "data" / d for d in ("books", "movies")}
    for d, folder in domains.items():
        shutil.copytree(demo_domains[d], folder)
    return load_config(write_config(tmp_path, base_model=tiny_bert, domains=domains, targets=["books", "movies"],
                                    store=str(store)))


def own(domain: str):
    return make_mixture_spec(members=[domain], targets=[domain], require_targets=False)


def test_the_fingerprint_follows_the_mixture_the_split_the_adapters_and_the_data(cfg):
    stored = StoredCorrectness(cfg)
    soup = make_mixture_spec(members=["books", "movies"], targets=["books", "movies"])
    first = stored.fingerprint(own("books"), "test")
    assert stored.fingerprint(own("books"), "test") == first
    assert len({first, stored.fingerprint(own("books"), "validation"), stored.fingerprint(own("movies"), "test"),
                stored.fingerprint(soup, "test")}) == 4
    # movies's files do not shape books' own adapter; books' adapter and data do
    os.utime(cfg.domains["movies"].path + "/test.jsonl", ns=(1, 1))
    assert StoredCorrectness(cfg).fingerprint(own("books"), "test") == first
    os.utime(os.path.join(cfg.store_path, "books", "adapter.safetensors"), ns=(1, 1))
    assert StoredCorrectness(cfg).fingerprint(own("books"), "test") != first


def test_a_kept_record_is_read_back_whole_or_not_at_all(cfg):
    stored = StoredCorrectness(cfg)
    soup = make_mixture_spec(members=["books", "movies"], targets=["books", "movies"])
    assert stored.read(soup, "test") is None
    stored.write(soup, {"test": {"books": [1, 0], "movies": [0, 1]}, "validation": {"books": [1], "movies": [1]}})
    assert stored.read(soup, "test") == {"test": {"books": [1, 0], "movies": [0, 1]}}
    assert stored.read(soup, "validation") == {"validation": {"books": [1], "movies": [1]}}
    # a split that lacks a target (a failed part) is not kept; a torn file is not an answer
    stored.write(soup, {"test": {"books": [0, 0]}})
    assert stored.read(soup, "test") == {"test": {"books": [1, 0], "movies": [0, 1]}}
    other = make_mixture_spec(members=["books", "movies"], targets=["books", "movies"], merge_method="ties",
                              density=0.2, lam=1.0)
    stored.write(other, {"test": {"books": [0, 0]}})
    assert stored.read(other, "test") is None
    path = stored.root / f"{stored.fingerprint(soup, 'validation')}.json"
    path.write_text(path.read_text()[:10])
    assert stored.read(soup, "validation") is None
    assert not [p for p in stored.root.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.integration
def test_a_second_confirmation_reads_every_evaluation_from_the_store_and_runs_no_trial(cfg, ray_cluster):
    from search.confirmation_trials import run_confirmation_trials
    from search.new_domain import confirmation_weights

    weights, _ = confirmation_weights(cfg, cfg.search.targets)
    candidates = {"own/books": (own("books"), ["test", "validation"]), "own/movies": (own("movies"), ["test"]),
                  "soup": (make_mixture_spec(members=["books", "movies"], targets=["books", "movies"]), ["test"])}
    first_lines: list[str] = []
    first = run_confirmation_trials(cfg, candidates, weights, name="first", progress=first_lines.append)
    assert sum(" done, " in line for line in first_lines) == 3
    assert len(list(StoredCorrectness(cfg).root.glob("*.json"))) == 4  # one per (mixture, split)

    again_lines: list[str] = []
    again = run_confirmation_trials(cfg, candidates, weights, name="again", progress=again_lines.append)
    assert again == first
    assert not any(" done, " in line for line in again_lines)
    assert any(line.startswith("4 evaluation(s) read from") for line in again_lines), again_lines

    # books' adapter rewritten (a retrain): books' own adapter and the soup run again, movies's is read
    os.utime(os.path.join(cfg.store_path, "books", "adapter.safetensors"))
    changed_lines: list[str] = []
    changed = run_confirmation_trials(cfg, candidates, weights, name="changed", progress=changed_lines.append)
    assert changed == first  # same weights, same answers
    assert sum(" done, " in line for line in changed_lines) == 2
    assert any(line.startswith("1 evaluation(s) read from") for line in changed_lines), changed_lines


def test_the_trials_start_largest_first_and_a_lone_long_pass_is_split_by_targets():
    from search.confirmation_trials import trial_parts

    def entry(targets, splits):
        return {"spec": {"members": list(targets), "targets": list(targets)}, "splits": splits}

    # the chosen mixture alone on test, 4 targets, 2 trials at once: two halves
    parts = trial_parts({"chosen": entry("abcd", ["test"])}, 2)
    assert [(k, e["targets"]) for k, e in parts] == [("chosen", ["a", "b"]), ("chosen", ["c", "d"])]
    # enough trials already: none is split, the largest starts first
    parts = trial_parts({"own": entry("a", ["test", "validation"]), "soup": entry("abcd", ["test"]),
                         "ties": entry("abc", ["validation"])}, 2)
    assert [k for k, _ in parts] == ["soup", "ties", "own"] and not any("targets" in e for _, e in parts)
    # a one-target pass cannot be split
    assert len(trial_parts({"own": entry("a", ["test"])}, 4)) == 1
