"""Tests for the demo's generated multi-domain dataset (stdlib + pytest only)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from search.cli import demo_data
from search.cli.demo_data import (
    CONFLICTING_CUES,
    DEMO_DOMAINS,
    DOMAIN_CUES,
    DOMAIN_LABELS,
    SHARED_CUES,
    SPLITS,
    TOPIC_CUES,
    write_demo_domains,
)

REVIEW_DOMAINS = [d for d in DEMO_DOMAINS if d != "support"]
SIZES = {"train": 400, "validation": 100, "test": 100}


def _read(path: Path) -> list[dict[str, object]]:
    """Returns the parsed rows of one JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _words(text: str) -> set[str]:
    """Returns the lower-cased word tokens of a text."""
    return set(re.findall(r"[a-z']+", text.lower()))


def _lexicon_predict(text: str, lexicon: dict[int, list[str]]) -> int | None:
    """Returns the label whose cue sentences occur most often in ``text``, or None on a tie."""
    scores = {label: sum(cue in text for cue in cues) for label, cues in lexicon.items()}
    best = max(scores.values())
    winners = [label for label, score in scores.items() if score == best]
    return winners[0] if len(winners) == 1 else None


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    folders = write_demo_domains(out)
    assert folders == {d: out / d for d in DEMO_DOMAINS}
    return out


@pytest.fixture(scope="module")
def rows(demo_dir: Path) -> dict[str, dict[str, list[dict[str, object]]]]:
    return {d: {s: _read(demo_dir / d / f"{s}.jsonl") for s in SPLITS} for d in DEMO_DOMAINS}


def test_files_exist_with_requested_counts(demo_dir: Path, rows: dict) -> None:
    for domain in DEMO_DOMAINS:
        for split, n in SIZES.items():
            assert (demo_dir / domain / f"{split}.jsonl").is_file()
            assert len(rows[domain][split]) == n


def test_every_line_is_text_and_label(rows: dict) -> None:
    for domain, splits in rows.items():
        n_labels = len(DOMAIN_LABELS[domain])
        for split_rows in splits.values():
            for row in split_rows:
                assert set(row) == {"text", "label"}
                assert isinstance(row["text"], str) and row["text"].strip()
                assert isinstance(row["label"], int) and 0 <= row["label"] < n_labels


def test_support_has_three_labels_and_reviews_two(rows: dict) -> None:
    assert {r["label"] for r in rows["support"]["train"]} == {0, 1, 2}
    for domain in REVIEW_DOMAINS:
        assert {r["label"] for r in rows[domain]["train"]} == {0, 1}


@pytest.mark.parametrize("domain", list(DEMO_DOMAINS))
def test_labels_are_balanced(rows: dict, domain: str) -> None:
    for split, n in SIZES.items():
        counts = Counter(r["label"] for r in rows[domain][split])
        assert len(counts) == len(DOMAIN_LABELS[domain])
        assert max(counts.values()) - min(counts.values()) <= 1
        if n % len(DOMAIN_LABELS[domain]) == 0:
            assert len(set(counts.values())) == 1


def test_review_validation_and_test_are_exactly_balanced(rows: dict) -> None:
    for domain in REVIEW_DOMAINS:
        for split in ("validation", "test"):
            assert Counter(r["label"] for r in rows[domain][split]) == {0: 50, 1: 50}


def test_no_text_repeats_within_or_across_splits(rows: dict) -> None:
    for splits in rows.values():
        texts = [r["text"] for split_rows in splits.values() for r in split_rows]
        assert len(texts) == len(set(texts))


def test_texts_are_short_enough_for_64_tokens(rows: dict) -> None:
    lengths = [len(r["text"].split()) for s in rows.values() for rs in s.values() for r in rs]
    assert min(lengths) >= 10
    assert max(lengths) <= 40


def test_same_seed_gives_byte_identical_files(demo_dir: Path, tmp_path: Path) -> None:
    write_demo_domains(tmp_path)
    for domain in DEMO_DOMAINS:
        for split in SPLITS:
            name = f"{domain}/{split}.jsonl"
            assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes()


def test_writing_the_same_data_again_leaves_the_files_alone_and_other_data_replaces_them(tmp_path: Path) -> None:
    # the store's kept evaluations are fingerprinted by their data files' sizes and times: a demo run
    # again must not make them look new
    import os

    write_demo_domains(tmp_path, n_train=20, n_validation=10, n_test=10)
    path = tmp_path / "books" / "train.jsonl"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    write_demo_domains(tmp_path, n_train=20, n_validation=10, n_test=10)
    assert path.stat().st_mtime_ns == 1_000_000_000
    write_demo_domains(tmp_path, seed=1, n_train=20, n_validation=10, n_test=10)
    assert path.stat().st_mtime_ns != 1_000_000_000
    assert path.read_bytes() == (write_demo_domains(tmp_path / "b", seed=1, n_train=20, n_validation=10, n_test=10)
                                 ["books"] / "train.jsonl").read_bytes()


def test_different_seed_gives_different_texts(rows: dict, tmp_path: Path) -> None:
    write_demo_domains(tmp_path, seed=1)
    for domain in DEMO_DOMAINS:
        other = {r["text"] for r in _read(tmp_path / domain / "train.jsonl")}
        ours = {r["text"] for r in rows[domain]["train"]}
        assert len(ours & other) < len(ours) / 2


def test_conflicting_words_flip_polarity_between_domains(rows: dict) -> None:
    flipped_pairs: set[tuple[str, str]] = set()
    for word in CONFLICTING_CUES:
        p_positive: dict[str, float] = {}
        for domain in REVIEW_DOMAINS:
            labels = [r["label"] for r in rows[domain]["train"] if word in _words(r["text"])]
            if len(labels) >= 10:
                p_positive[domain] = sum(labels) / len(labels)
        flipped_pairs |= {(a, b) for a, pa in p_positive.items() for b, pb in p_positive.items()
                          if pa > 0.7 and pb < 0.3}
    assert len(flipped_pairs) >= 2
    assert ("books", "electronics") in flipped_pairs  # "unpredictable", "slow"
    assert ("kitchen", "movies") in flipped_pairs  # "long", "light", "cold", "quiet"


def test_shared_cues_alone_do_not_solve_reviews(rows: dict) -> None:
    lexicon = {label: list(cues) for label, cues in SHARED_CUES.items()}
    for domain in REVIEW_DOMAINS:
        data = rows[domain]["train"]
        correct = sum((_lexicon_predict(r["text"], lexicon) or 1) == r["label"] for r in data)
        assert correct / len(data) < 0.95


def test_domain_aware_cues_learn_reviews(rows: dict) -> None:
    for domain in REVIEW_DOMAINS:
        lexicon = {label: list(SHARED_CUES[label]) + list(DOMAIN_CUES[domain][label]) for label in (0, 1)}
        for per_domain in CONFLICTING_CUES.values():
            if domain in per_domain:
                label, sentence = per_domain[domain]
                lexicon[label].append(sentence)
        data = rows[domain]["test"]
        correct = sum(_lexicon_predict(r["text"], lexicon) == r["label"] for r in data)
        assert correct / len(data) > 0.8


def test_domain_blind_conflicting_cues_hurt_another_domain(rows: dict) -> None:
    """Reading electronics reviews with the books polarity of the conflicting words is mostly wrong."""
    votes = []
    for row in rows["electronics"]["train"]:
        for word, per_domain in CONFLICTING_CUES.items():
            if "books" in per_domain and word in _words(row["text"]):
                votes.append(per_domain["books"][0] == row["label"])
    assert len(votes) >= 50
    assert sum(votes) / len(votes) < 0.3


def test_support_topics_are_learnable(rows: dict) -> None:
    lexicon = {label: list(cues) for label, cues in TOPIC_CUES.items()}
    data = rows["support"]["test"]
    correct = sum(_lexicon_predict(r["text"], lexicon) == r["label"] for r in data)
    assert correct / len(data) > 0.8


def test_support_reuses_review_vocabulary(rows: dict) -> None:
    texts = [r["text"] for r in rows["support"]["train"]]
    review_sentences = [c for cues in SHARED_CUES.values() for c in cues]
    review_sentences += [c for c in DOMAIN_CUES["electronics"][0]]
    assert sum(any(c in t for c in review_sentences) for t in texts) > len(texts) / 4


def test_no_temp_files_are_left(demo_dir: Path) -> None:
    assert list(demo_dir.rglob("*.tmp")) == []
    assert sorted(p.name for p in (demo_dir / "books").iterdir()) == sorted(f"{s}.jsonl" for s in SPLITS)


def test_crash_while_writing_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_replace = demo_data.os.replace

    def failing_replace(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(demo_data.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_demo_domains(tmp_path)
    assert list(tmp_path.rglob("*.tmp")) == []
    written = sorted(p.name for p in (tmp_path / "books").iterdir())
    assert written == ["train.jsonl"]
    assert len(_read(tmp_path / "books" / "train.jsonl")) == SIZES["train"]


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"n_validation": -1}, {"n_test": 2.5}, {"n_train": True}])
def test_rejects_bad_sizes(tmp_path: Path, bad: dict[str, object]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        write_demo_domains(tmp_path, **bad)  # type: ignore[arg-type]


def test_exhausted_templates_raise_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_data, "_review_text", lambda domain, label, rng: f"{domain} review {label}")
    with pytest.raises(ValueError, match="distinct 'books' texts"):
        write_demo_domains(tmp_path)
