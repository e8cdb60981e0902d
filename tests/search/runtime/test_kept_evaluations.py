"""Evaluations kept in the store (``<store>/.correctness``): a mixture evaluated on a split by one
confirmation or plan is read, not evaluated, by the next; a changed adapter or data file, another
split or another mixture is evaluated. Real Ray trials on the tiny BERT's adapters."""

from __future__ import annotations

import os
import shutil

import pytest

from search.settings.config import load_config
from search.runtime.kept_evaluations import CORRECTNESS_DIR, StoredCorrectness
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


def test_the_fingerprint_follows_the_body_the_target_the_split_the_adapters_and_the_data(cfg):
    stored = StoredCorrectness(cfg)
    soup = make_mixture_spec(members=["books", "movies"], targets=["books", "movies"])
    first = stored.fingerprint(own("books"), "test", "books")
    assert stored.fingerprint(own("books"), "test", "books") == first
    assert len({first, stored.fingerprint(own("books"), "validation", "books"),
                stored.fingerprint(own("movies"), "test", "movies"), stored.fingerprint(soup, "test", "books"),
                stored.fingerprint(soup, "test", "movies")}) == 5
    # a target's rows do not depend on the mixture's other targets
    cross = make_mixture_spec(members=["books"], targets=["movies"], require_targets=False)
    both = make_mixture_spec(members=["books"], targets=["books", "movies"], require_targets=False)
    assert stored.fingerprint(cross, "validation", "movies") == stored.fingerprint(both, "validation", "movies")
    # movies' files do not shape books' own adapter on books; books' adapter and data do
    os.utime(cfg.domains["movies"].path + "/test.jsonl", ns=(1, 1))
    assert StoredCorrectness(cfg).fingerprint(own("books"), "test", "books") == first
    os.utime(cfg.domains["books"].path + "/test.jsonl", ns=(1, 1))
    moved = StoredCorrectness(cfg).fingerprint(own("books"), "test", "books")
    assert moved != first
    os.utime(os.path.join(cfg.store_path, "books", "adapter.safetensors"), ns=(1, 1))
    assert StoredCorrectness(cfg).fingerprint(own("books"), "test", "books") not in (first, moved)


def test_a_kept_record_is_read_back_per_target_and_a_torn_file_is_not_an_answer(cfg):
    stored = StoredCorrectness(cfg)
    soup = make_mixture_spec(members=["books", "movies"], targets=["books", "movies"])
    assert stored.read(soup, "test", "books") is None
    stored.write(soup, {"test": {"books": [1, 0], "movies": [0, 1]}, "validation": {"books": [1]}})
    assert stored.read(soup, "test", "books") == {"test": [1, 0]}
    assert stored.read(soup, "test", "movies") == {"test": [0, 1]}
    assert stored.read(soup, "validation", "books") == {"validation": [1]}
    assert stored.read(soup, "validation", "movies") is None
    path = stored.root / f"{stored.fingerprint(soup, 'validation', 'books')}.json"
    path.write_text(path.read_text()[:10])
    assert stored.read(soup, "validation", "books") is None
    assert not [p for p in stored.root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.integration
def test_a_second_confirmation_reads_every_evaluation_from_the_store_and_runs_no_trial(cfg, ray_cluster):
    from search.workflows.confirmation_passes import run_confirmation_trials
    from search.workflows.new_domain import confirmation_weights

    weights, _ = confirmation_weights(cfg, cfg.search.targets)
    candidates = {"own/books": (own("books"), ["test", "validation"]), "own/movies": (own("movies"), ["test"]),
                  "soup": (make_mixture_spec(members=["books", "movies"], targets=["books", "movies"]), ["test"])}
    first_lines: list[str] = []
    first = run_confirmation_trials(cfg, candidates, weights, name="first", progress=first_lines.append)
    assert sum(" done, " in line for line in first_lines) == 3
    assert len(list(StoredCorrectness(cfg).root.glob("*.json"))) == 5  # one per (mixture, split, target)

    again_lines: list[str] = []
    again = run_confirmation_trials(cfg, candidates, weights, name="again", progress=again_lines.append)
    assert again == first
    assert not any(" done, " in line for line in again_lines)
    assert any(line.startswith("5 evaluation(s) of a target read from") for line in again_lines), again_lines

    # books' adapter rewritten (a retrain): books' own adapter and the soup run again, movies' is read
    os.utime(os.path.join(cfg.store_path, "books", "adapter.safetensors"))
    changed_lines: list[str] = []
    changed = run_confirmation_trials(cfg, candidates, weights, name="changed", progress=changed_lines.append)
    assert changed == first  # same weights, same answers
    assert sum(" done, " in line for line in changed_lines) == 2
    assert any(line.startswith("1 evaluation(s) of a target read from") for line in changed_lines), changed_lines

    # A target's rows are kept whatever mixture asked for them: books' adapter scored on books and
    # movies (a cross head) reads books from own/books and evaluates movies alone.
    cross = make_mixture_spec(members=["books"], targets=["books", "movies"], require_targets=False)
    cross_lines: list[str] = []
    crossed = run_confirmation_trials(cfg, {"cross": (cross, ["test"])}, weights, name="cross",
                                      progress=cross_lines.append)
    assert crossed["cross"]["test"]["books"] == first["own/books"]["test"]["books"]
    assert len(crossed["cross"]["test"]["movies"]) == len(first["own/movies"]["test"]["movies"])
    done = [line for line in cross_lines if " done, " in line]
    assert len(done) == 1 and done[0].startswith("confirmation: 1/1 done, books on movies (test)"), cross_lines


def test_the_trials_start_largest_first_and_a_lone_long_pass_is_split_by_targets():
    from search.workflows.confirmation_passes import trial_parts

    def entry(targets, splits):
        return {"spec": {"members": list(targets), "targets": list(targets)}, "splits": splits}

    # the chosen mixture alone on test, 4 targets, 2 trials at once: two halves
    parts = trial_parts([("chosen", entry("abcd", ["test"]))], 2)
    assert [(k, e["targets"]) for k, e in parts] == [("chosen", ["a", "b"]), ("chosen", ["c", "d"])]
    # enough trials already: none is split, the largest starts first
    parts = trial_parts([("own", entry("a", ["test", "validation"])), ("soup", entry("abcd", ["test"])),
                         ("ties", entry("abc", ["validation"]))], 2)
    assert [k for k, _ in parts] == ["soup", "ties", "own"] and not any("targets" in e for _, e in parts)
    # a one-target pass cannot be split
    assert len(trial_parts([("own", entry("a", ["test"]))], 4)) == 1
    # a part that already names its targets (those the store lacked) is split within them
    parts = trial_parts([("cross", {**entry("abcd", ["test"]), "targets": ["c", "d"]})], 2)
    assert [e["targets"] for _, e in parts] == [["c"], ["d"]]
