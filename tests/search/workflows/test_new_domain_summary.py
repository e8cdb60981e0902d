"""What a new domain's search says at its end: no serving talk (a new domain has no adapter to
serve), the baselines in words a user reads, and whether the answer is the best single adapter."""

from __future__ import annotations

import pytest

from search.settings.config import validate_config
from search.workflows.baselines import TIES_OF_ALL, serving_lines
from search.workflows.new_domain import best_single_line


def _config(tmp_path, *, data_only: bool):
    books = {"path": str(tmp_path / "books"), **({"train": False, "max_train_examples": 16} if data_only else {})}
    return validate_config({"name": "nd", "base_model": "bert-base-uncased",
                            "domains": {"books": books, "dvd": {"path": str(tmp_path / "dvd")},
                                        "kitchen": {"path": str(tmp_path / "kitchen")}},
                            "search": {"targets": ["books"], **({"head": "refit"} if data_only else {})}},
                           base_dir=tmp_path)


def test_a_new_domains_summary_speaks_of_its_baselines_not_of_serving(tmp_path):
    cfg = _config(tmp_path, data_only=True)
    baselines = {"single books": {"accuracy/books": 0.50, "accuracy_mean": 0.50},
                 "soup of all": {"accuracy_mean": 0.60}, TIES_OF_ALL: {"accuracy_mean": 0.70}}
    lines = serving_lines(cfg, {"accuracy/books": 0.78}, baselines)
    text = "\n".join(lines)
    assert "+28.0 points against the adapter fine-tuned on the few labelled examples (books: 16) (0.5000)" in text
    assert "+18.0 points against the soup of all adapters (0.6000)" in text
    assert "+8.0 points against TIES of all (0.7000)" in text
    assert "served" not in text and "N-adapter bound" not in text and "own adapter" not in text
    assert "whether it is the best single adapter" in lines[-1]


@pytest.mark.parametrize("chosen, lead, low, high, beaten, expected", [
    (["dvd"], 0.0, 0.0, 0.0, False, "the chosen answer is the best single adapter (dvd) itself"),
    (["dvd", "kitchen"], 0.08, 0.02, 0.14, True, "on test the chosen answer beats it beyond the interval"),
    (["dvd", "kitchen"], -0.01, -0.05, 0.03, False, "on test the chosen answer is level with it within the interval"),
    (["dvd", "kitchen"], -0.09, -0.15, -0.03, False, "on test the chosen answer is WORSE than it beyond the interval"),
])
def test_the_summary_says_where_the_answer_stands_against_the_best_single_adapter(chosen, lead, low, high,
                                                                                   beaten, expected):
    single = {"members": ["dvd"], "lead": lead, "lead_low": low, "lead_high": high, "beaten": beaten}
    line = best_single_line(chosen, single)
    assert expected in line
    if chosen != ["dvd"]:
        assert "the best single adapter on validation was dvd" in line and f"{lead:+.3f}" in line


@pytest.mark.parametrize("library, budget, alone", [
    (3, 12, 3),  # a budget of twice the library or more: every adapter alone
    (3, 5, 2),  # at most half the budget: the combinations keep the rest
    (10, 12, 6),
    (10, 1, 1),  # one mixture: the nearest adapter alone
])
def test_singles_first_scores_the_nearest_alone_within_half_the_budget(library, budget, alone):
    from search.workflows.new_domain import singles_to_score

    ranked = [f"d{i}" for i in range(library)]  # nearest first
    singles, rest = singles_to_score(ranked, budget)
    assert singles == ranked[:alone] and rest == ranked[alone:]


def test_the_summary_says_how_many_library_adapters_were_not_scored_alone():
    from search.workflows.new_domain import NewDomainStart

    start = NewDomainStart(target="books", ranked=(("dvd", 0.9), ("kitchen", 0.5), ("toys", 0.1)),
                           singles=("dvd", "kitchen"), not_alone=("toys",), order=None)
    line = start.summary_line()
    assert "2 library adapter(s) scored alone before any combination, nearest first (dvd, kitchen)" in line
    assert "1 library adapter(s) not scored alone" in line and "(toys)" in line
    everything = NewDomainStart(target="books", ranked=(("dvd", 0.9),), singles=("dvd",), not_alone=(), order=None)
    assert "not scored alone" not in everything.summary_line()
