"""The black-box word-substitution attack: the greedy search on a readable word-score classifier,
then on the tiny random BERT with an adapter trained in-process (determinism)."""

from __future__ import annotations

import math

import pytest

from trainables.blackbox_attack import attack_metrics, attack_split, attack_text, attacked_rows
from trainables.settings import BlackboxAttack

# A real (if simple) classifier: P(positive) = sigmoid(sum of word scores). Class 1 = positive.
SCORES = {"great": 3.0, "fine": 1.0, "good": 2.0, "ok": 0.5, "plot": 0.2, "poor": -3.0, "dull": -2.5, "acting": 0.1}


class WordScoreClassifier:
    """texts -> [P(negative), P(positive)]; counts its calls and the texts it was asked about."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            z = sum(SCORES.get(w.strip(".,!").lower(), 0.0) for w in t.split())
            p = 1 / (1 + math.exp(-z))
            out.append([1 - p, p])
        return out


class TableSynonyms:
    """A synonym source from a fixed table (the offline sources are tested below)."""

    def __init__(self, table):
        self.table = table

    def candidates(self, word, k):
        return self.table.get(word, [])[:k]


TABLE = {"great": [("fine", 0.9), ("ok", 0.6), ("dull", 0.3)], "good": [("ok", 0.8), ("poor", 0.2)],
         "plot": [("story", 0.9)], "acting": [("performance", 0.9)]}


def test_replaces_the_most_important_word_first_by_the_candidate_that_hurts_most_and_stops_on_the_flip():
    settings = BlackboxAttack(similarity_floor=0.0, max_word_share=1.0)
    classify = WordScoreClassifier()
    out = attack_text("A great plot and good acting.", 1, classify, TableSynonyms(TABLE), settings)
    # deletion: great (3.0) > good (2.0) > plot (0.2) > acting (0.1); "a"/"and" are stop words.
    # great -> dull (-2.5) flips it at once: z = -2.5 + 0.2 + 2.0 + 0.1 < 0.
    assert out.attacked == "A dull plot and good acting."
    assert (out.original_prediction, out.attacked_prediction, out.words_changed) == (1, 0, 1)
    # 1 clean + 4 deletions + 3 candidates of "great", each word's candidates in one call
    assert out.queries == 1 + 4 + 3 and [len(c) for c in classify.calls] == [1, 4, 3]
    assert classify.calls[1][0] == "A  plot and good acting."


def test_the_similarity_floor_and_the_word_share_bound_the_attack():
    # floor 0.5: "dull" is out; great -> ok, then good -> ok: z = 0.5 + 0.2 + 0.5 + 0.1 > 0, no flip
    out = attack_text("A great plot and good acting.", 1, WordScoreClassifier(), TableSynonyms(TABLE),
                      BlackboxAttack(similarity_floor=0.5, max_word_share=1.0))
    # then plot -> story and acting -> performance, which lower P(positive) too (scores 0.2, 0.1 gone)
    assert out.attacked == "A ok story and ok performance." and out.correct_after
    assert out.words_changed == 4
    # a quarter of 4 attackable words: one change at most
    out = attack_text("A great plot and good acting.", 1, WordScoreClassifier(), TableSynonyms(TABLE),
                      BlackboxAttack(similarity_floor=0.5, max_word_share=0.25))
    assert out.attacked == "A ok plot and good acting." and out.words_changed == 1


def test_the_query_budget_is_never_exceeded():
    for budget in (2, 3, 5, 6, 7, 9):
        classify = WordScoreClassifier()
        out = attack_text("A great plot and good acting.", 1, classify, TableSynonyms(TABLE),
                          BlackboxAttack(similarity_floor=0.0, max_word_share=1.0, query_budget=budget))
        assert out.queries == sum(len(c) for c in classify.calls) <= budget


def test_a_misclassified_text_is_not_attacked_and_counts_as_wrong():
    classify = WordScoreClassifier()
    out = attack_text("A poor plot.", 1, classify, TableSynonyms(TABLE), BlackboxAttack())
    assert out.attacked == "A poor plot." and out.queries == 1 and not out.correct_after
    m = attack_metrics([out], "books")
    assert m["bb_robust_accuracy/books"] == 0.0 and math.isnan(m["bb_attack_success/books"])


def test_case_is_kept_and_words_past_the_horizon_are_left_alone():
    out = attack_text("Great plot. Good acting.", 1, WordScoreClassifier(), TableSynonyms(TABLE),
                      BlackboxAttack(similarity_floor=0.0, max_word_share=1.0), horizon=11)
    assert out.attacked == "Dull plot. Good acting." and out.words == 2


def test_metrics_over_attacked_rows():
    s = BlackboxAttack(similarity_floor=0.0, max_word_share=1.0)
    texts = ["A great plot.", "A poor plot.", "Good acting, good plot."]
    outs = [attack_text(t, 1, WordScoreClassifier(), TableSynonyms(TABLE), s) for t in texts]
    m = attack_metrics(outs, "t")
    assert m["bb_robust_accuracy/t"] == pytest.approx(sum(o.correct_after for o in outs) / 3)
    assert m["bb_attack_success/t"] == pytest.approx(sum(not o.correct_after for o in outs if o.correct_before) / 2)
    assert m["bb_queries/t"] == pytest.approx(sum(o.queries for o in outs) / 3)


def test_the_attacked_rows_are_a_seeded_sample():
    s = BlackboxAttack(examples=5, seed=0)
    assert attacked_rows(40, s) == attacked_rows(40, s) == [1, 14, 15, 20, 28]
    assert attacked_rows(40, BlackboxAttack(examples=5, seed=1)) != attacked_rows(40, s)
    assert attacked_rows(3, s) == [0, 1, 2]


@pytest.mark.parametrize("bad", [{"synonyms": "glove"}, {"examples": 0}, {"query_budget": 1},
                                 {"max_word_share": 0.0}, {"max_word_share": 1.5}, {"candidates": 0},
                                 {"similarity_floor": 2.0}, {"synonyms": "wordnet", "wordnet_folder": "/nowhere"}])
def test_bad_settings_are_refused(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        BlackboxAttack(**bad)


def test_a_missing_wordnet_folder_names_the_setting_and_how_to_install(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"wordnet_folder '/nowhere' does not exist: install it with "
                                              r"'apt-get install wordnet-base"):
        BlackboxAttack(synonyms="wordnet", wordnet_folder="/nowhere")
    (tmp_path / "index.noun").write_text("")
    with pytest.raises(ValidationError, match="is not a WordNet database"):
        BlackboxAttack(synonyms="wordnet", wordnet_folder=str(tmp_path))


@pytest.fixture(scope="module")
def trained(trained_tiny_books):
    return trained_tiny_books.model, trained_tiny_books.tokenizer, trained_tiny_books.split


def test_the_same_seed_gives_the_same_attacked_texts(trained):
    from trainables.synonyms import EmbeddingSynonyms

    model, tokenizer, split = trained
    synonyms = EmbeddingSynonyms.from_model(model, tokenizer)
    settings = BlackboxAttack(examples=6, seed=3, similarity_floor=0.0, candidates=8)
    runs = [attack_split(model, tokenizer, split["text"], split["label"], synonyms, settings, max_length=32,
                         batch_size=16) for _ in range(2)]
    assert [o.as_dict() for o in runs[0]] == [o.as_dict() for o in runs[1]]
    assert [o.original for o in runs[0]] == [split["text"][r] for r in attacked_rows(len(split), settings)]
    assert any(o.words_changed for o in runs[0])  # the attack did something to pin
    for o in runs[0]:
        assert o.queries <= settings.query_budget
        assert o.correct_before or o.attacked == o.original
    other = attack_split(model, tokenizer, split["text"], split["label"], synonyms,
                         settings.model_copy(update={"seed": 4}), max_length=32, batch_size=16)
    assert [o.original for o in other] != [o.original for o in runs[0]]


def test_the_reading_horizon_is_where_the_tokenizer_truncates(tiny_bert):
    from trainables.blackbox_attack import reading_horizon
    from trainables.model import load_encoder

    _, tokenizer = load_encoder(tiny_bert)
    text = " ".join(["great"] * 40)
    assert reading_horizon(tokenizer, text, 64) is None  # 40 words + 2 special tokens: all read
    horizon = reading_horizon(tokenizer, text, 12)  # [CLS] + 10 words + [SEP]
    assert horizon == len(" ".join(["great"] * 10))
    out = attack_text(text, 1, WordScoreClassifier(), TableSynonyms(TABLE),
                      BlackboxAttack(similarity_floor=0.0, max_word_share=1.0), horizon=horizon)
    assert out.words == 10
