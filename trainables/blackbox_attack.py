"""Accuracy under a black-box word-substitution attack (TextFooler, Jin et al., AAAI 2020).

Only the classifier's output probabilities are used. For one correctly classified text:

1. each word (not a stop word, inside what the model reads) is ranked by how much deleting it
   lowers the true class's probability (one query per word, batched);
2. the words are replaced one at a time, most important first, each by the candidate of the
   synonym source (:mod:`trainables.synonyms`) that lowers the true class's probability most
   (all candidates of a word in one batched query); a word whose best candidate does not
   lower it is left as it is;
3. the attack stops when the prediction flips (success), or when the share of words changed
   or the query budget is spent.

:func:`attack_text` is the attack on one text against any ``classify`` callable;
:func:`attack_split` attacks a seeded sample of a split's rows with a model and tokenizer.
Everything is deterministic: the same seed, model and texts give the same attacked texts.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from trainables.evaluate import encoded_split, split_texts
from trainables.model import cached_tokenizer, model_device
from trainables.settings import BlackboxAttack, Experiment
from trainables.synonyms import STOP_WORDS, EmbeddingSynonyms, SynonymSource, wordnet_synonyms

# texts -> one probability vector per text
Classify = Callable[[list[str]], list[list[float]]]
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


@dataclass(frozen=True)
class AttackOutcome:
    """What the attack did to one text."""

    original: str
    attacked: str
    label: int
    original_prediction: int
    attacked_prediction: int
    queries: int  # forward passes on single texts, the first (clean) one included
    words_changed: int
    words: int  # words the attack could consider

    @property
    def correct_before(self) -> bool:
        return self.original_prediction == self.label

    @property
    def correct_after(self) -> bool:
        return self.attacked_prediction == self.label

    def as_dict(self) -> dict:
        return asdict(self)


def _argmax(p: Sequence[float]) -> int:
    return max(range(len(p)), key=lambda c: (p[c], -c))


def _with_case(candidate: str, word: str) -> str:
    if word.isupper() and len(word) > 1:
        return candidate.upper()
    return candidate.capitalize() if word[:1].isupper() else candidate


def attack_text(text: str, label: int, classify: Classify, synonyms: SynonymSource, settings: BlackboxAttack,
                *, horizon: int | None = None) -> AttackOutcome:
    """The greedy attack (see the module) on one text; ``horizon``: the characters the model
    reads (words starting after it are not attacked: changing them changes nothing)."""
    spans = [m.span() for m in _WORD.finditer(text) if horizon is None or m.start() < horizon]
    words = [text[a:b] for a, b in spans]
    attackable = [i for i, w in enumerate(words) if w.lower() not in STOP_WORDS and len(w) > 1]
    clean = classify([text])[0]
    queries = 1
    prediction = _argmax(clean)
    if prediction != label or not attackable:
        return AttackOutcome(text, text, label, prediction, prediction, queries, 0, len(attackable))

    def render(replaced: dict[int, str]) -> str:
        out, last = [], 0
        for i in sorted(replaced):
            a, b = spans[i]
            out += [text[last:a], replaced[i]]
            last = b
        return "".join(out + [text[last:]])

    budget = settings.query_budget
    # 1. importance by deletion, over the words the budget allows
    ranked = attackable[: max(0, budget - queries)]
    deleted = classify([render({i: ""}) for i in ranked]) if ranked else []
    queries += len(ranked)
    drop = {i: clean[label] - p[label] for i, p in zip(ranked, deleted)}
    order = sorted(ranked, key=lambda i: (-drop[i], i))

    # 2. greedy substitution
    max_changes = max(1, math.floor(settings.max_word_share * len(attackable)))
    replaced: dict[int, str] = {}
    current = clean
    for i in order:
        if len(replaced) >= max_changes or queries >= budget:
            break
        word = words[i]
        options = [(_with_case(c, word), s) for c, s in synonyms.candidates(word.lower(), settings.candidates)
                   if s >= settings.similarity_floor]
        options = options[: budget - queries]
        if not options:
            continue
        probs = classify([render({**replaced, i: c}) for c, _ in options])
        queries += len(options)
        best = min(range(len(options)), key=lambda j: (probs[j][label], j))
        if probs[best][label] >= current[label]:
            continue
        replaced[i], current = options[best][0], probs[best]
        if _argmax(current) != label:
            break
    return AttackOutcome(text, render(replaced), label, prediction, _argmax(current), queries, len(replaced),
                         len(attackable))


def attacked_rows(n_rows: int, settings: BlackboxAttack) -> list[int]:
    """The rows of a split the attack takes: ``settings.examples`` of them, drawn with ``settings.seed``."""
    rows = list(range(n_rows))
    if settings.examples >= n_rows:
        return rows
    return sorted(random.Random(f"blackbox:{settings.seed}").sample(rows, settings.examples))


def text_classifier(model, tokenizer, *, max_length: int, batch_size: int,
                    text_pair: str | None = None) -> Classify:
    """``classify`` for :func:`attack_text`: ``model``'s (the active head's) softmax over each text,
    tokenised like the evaluation (truncated to ``max_length``; ``text_pair`` beside each text)."""
    import torch

    device = model_device(model)

    def classify(texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                pairs = [text_pair] * len(chunk) if text_pair is not None else None
                enc = tokenizer(chunk, pairs, truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt")
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
                out += torch.softmax(logits.float(), dim=-1).tolist()
        return out

    return classify


def reading_horizon(tokenizer, text: str, max_length: int, text_pair: str | None = None) -> int | None:
    """The character of ``text`` where the model stops reading it (``max_length`` tokens); None
    when it reads all of it or the tokenizer cannot say (no offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    enc = tokenizer(text, text_pair, truncation=True, max_length=max_length, return_offsets_mapping=True)
    seq = enc.sequence_ids() if hasattr(enc, "sequence_ids") else None
    ends = [b for (a, b), s in zip(enc["offset_mapping"], seq or [0] * len(enc["offset_mapping"])) if s == 0 and b > a]
    if not ends or ends[-1] >= len(text.rstrip()):
        return None
    return ends[-1]


def attack_split(model, tokenizer, texts: Sequence[str], labels: Sequence[int], synonyms: SynonymSource,
                 settings: BlackboxAttack, *, max_length: int, batch_size: int,
                 text_pairs: Sequence[str | None] | None = None) -> list[AttackOutcome]:
    """:func:`attack_text` on the rows :func:`attacked_rows` draws from ``texts``, in row order."""
    outcomes = []
    for row in attacked_rows(len(texts), settings):
        pair = text_pairs[row] if text_pairs is not None else None
        classify = text_classifier(model, tokenizer, max_length=max_length, batch_size=batch_size, text_pair=pair)
        horizon = reading_horizon(tokenizer, texts[row], max_length, pair)
        outcomes.append(attack_text(texts[row], int(labels[row]), classify, synonyms, settings, horizon=horizon))
    return outcomes


def attack_metrics(outcomes: Sequence[AttackOutcome], target: str) -> dict[str, float]:
    """``bb_robust_accuracy/<target>`` (accuracy on the attacked rows after the attack),
    ``bb_attack_success/<target>`` (share of the correctly classified rows flipped),
    ``bb_queries/<target>`` (mean forward passes per attacked row) and ``bb_words_changed/<target>``
    (mean words replaced per correctly classified row)."""
    n = len(outcomes)
    correct = [o for o in outcomes if o.correct_before]
    nan = float("nan")
    return {
        f"bb_robust_accuracy/{target}": sum(o.correct_after for o in outcomes) / n if n else nan,
        f"bb_attack_success/{target}": sum(not o.correct_after for o in correct) / len(correct) if correct else nan,
        f"bb_queries/{target}": sum(o.queries for o in outcomes) / n if n else nan,
        f"bb_words_changed/{target}": sum(o.words_changed for o in correct) / len(correct) if correct else nan,
    }


# Examples of attacked texts kept per target for the MLflow artifact (a few, for reading).
EXAMPLES_LOGGED = 5
_EMBEDDING_SOURCES: dict[str, EmbeddingSynonyms] = {}


def synonym_source(settings: BlackboxAttack, model, tokenizer, base_model: str) -> SynonymSource:
    """The configured synonym source, built once per process (``model``: the base encoder whose
    input embeddings the ``embedding`` source reads; the adapters never change them)."""
    if settings.synonyms == "wordnet":
        return wordnet_synonyms(settings.wordnet_folder)
    if base_model not in _EMBEDDING_SOURCES:
        _EMBEDDING_SOURCES[base_model] = EmbeddingSynonyms.from_model(model, tokenizer)
    return _EMBEDDING_SOURCES[base_model]


def attack_targets(model, targets: Sequence[str], experiment: Experiment, split: str = "validation"
                   ) -> tuple[dict[str, float], dict[str, list[dict]], dict[str, list[int]]]:
    """The attack of ``experiment.evaluation.blackbox_attack`` on each target's ``split`` with its
    head, on a :class:`~trainables.evaluate.MixtureModel`: :func:`attack_metrics` per target and
    their ``bb_robust_accuracy_mean``; a few attacked examples per target (original, attacked,
    label, both predictions as class names); and per target, whether each attacked row is still
    classified right (1) or not (0), in row order (the same rows for every mixture)."""
    settings = experiment.evaluation.blackbox_attack
    tokenizer = cached_tokenizer(experiment.base_model, trust_remote_code=experiment.trust_remote_code)
    synonyms = synonym_source(settings, model.model, tokenizer, experiment.base_model)
    metrics: dict[str, float] = {}
    examples: dict[str, list[dict]] = {}
    correct: dict[str, list[int]] = {}
    for target in targets:
        model.use_head(target)
        names = model.label_names[target]
        texts, pairs = split_texts(experiment, target, split, names)
        labels = encoded_split(experiment, target, split, names).labels
        outcomes = attack_split(model.model, tokenizer, texts, labels, synonyms, settings,
                                max_length=experiment.training.max_length,
                                batch_size=experiment.evaluation.batch_size, text_pairs=pairs)
        metrics.update(attack_metrics(outcomes, target))
        correct[target] = [int(o.correct_after) for o in outcomes]
        changed = [o for o in outcomes if o.words_changed] or list(outcomes)
        examples[target] = [{**o.as_dict(), "label": names[o.label], "original_prediction": names[o.original_prediction],
                             "attacked_prediction": names[o.attacked_prediction]} for o in changed[:EXAMPLES_LOGGED]]
    metrics["bb_robust_accuracy_mean"] = sum(metrics[f"bb_robust_accuracy/{t}"] for t in targets) / len(targets)
    return metrics, examples, correct
