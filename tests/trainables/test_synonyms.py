"""The offline synonym sources: the encoder's embedding neighbours (always), WordNet (when installed)."""

from __future__ import annotations

import pytest

from trainables.synonyms import DEFAULT_WORDNET_FOLDER, STOP_WORDS, EmbeddingSynonyms, is_own_form, wordnet_folder


def test_embedding_neighbours_are_whole_words_by_cosine_without_stop_words_or_own_forms():
    import torch

    tokens = ["[PAD]", "good", "goods", "great", "##ness", "the", "fine", "bad", "x", "12", "goodness", "nice"]
    emb = torch.zeros(len(tokens), 3)
    emb[1] = torch.tensor([1.0, 0.0, 0.0])   # good
    emb[2] = torch.tensor([1.0, 0.01, 0.0])  # goods: nearest, but a form of good
    emb[3] = torch.tensor([1.0, 0.2, 0.0])   # great
    emb[4] = torch.tensor([1.0, 0.0, 0.01])  # ##ness: a piece
    emb[5] = torch.tensor([1.0, 0.0, 0.02])  # the: a stop word
    emb[6] = torch.tensor([1.0, 0.5, 0.0])   # fine
    emb[7] = torch.tensor([-1.0, 0.0, 0.0])  # bad: opposite direction
    emb[9] = torch.tensor([1.0, 0.0, 0.0])   # 12: not letters
    emb[10] = torch.tensor([1.0, 0.0, 0.0])  # goodness: a form of good
    emb[11] = torch.tensor([0.0, 1.0, 0.0])  # nice
    source = EmbeddingSynonyms(tokens, emb)
    got = source.candidates("good", 3)
    assert [w for w, _ in got] == ["great", "fine", "nice"]
    assert got[0][1] == pytest.approx(1 / (1 + 0.04) ** 0.5, abs=1e-5)
    assert source.candidates("unknownword", 3) == []  # not a whole-word entry: no candidates


def test_embedding_source_of_the_tiny_encoder(tiny_bert):
    from trainables.model import load_encoder

    model, tokenizer = load_encoder(tiny_bert)
    source = EmbeddingSynonyms.from_model(model, tokenizer)
    got = source.candidates("book", 10)
    assert len(got) == 10 and [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    vocab = tokenizer.get_vocab()
    for w, _ in got:
        assert w in vocab and w.isalpha() and w not in STOP_WORDS and not is_own_form("book", w)


@pytest.mark.skipif(not __import__("os").path.isfile(f"{DEFAULT_WORDNET_FOLDER}/index.sense"),
                    reason=f"WordNet is not installed at {DEFAULT_WORDNET_FOLDER} "
                           "(apt-get install wordnet-base wordnet-sense-index; .ci/run installs it)")
def test_wordnet_synonyms_share_a_sense_and_its_part_of_speech():
    from trainables.synonyms import wordnet_synonyms

    source = wordnet_synonyms(DEFAULT_WORDNET_FOLDER)
    got = [w for w, s in source.candidates("movie", 10)]
    assert got[:2] == ["film", "picture"]
    for w in source.candidates("boring", 10):
        shared = [(a.pos(), b.pos()) for a in source.reader.synsets("boring") for b in source.reader.synsets(w[0])
                  if a == b]
        assert shared, w  # one synset, so one part of speech, in common
    assert all(s == 1.0 for _, s in source.candidates("terrible", 5))
    assert wordnet_folder(DEFAULT_WORDNET_FOLDER).samefile(DEFAULT_WORDNET_FOLDER)
