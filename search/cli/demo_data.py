"""The offline demo's own multi-domain text classification data, seeded and deterministic.

Four review domains share part of their sentiment vocabulary ("excellent", "waste of
money") and disagree on the rest: a word such as "unpredictable" is praise for a novel
and a complaint about a touchscreen. A domain adapter therefore learns some cues that
transfer and some that are wrong elsewhere, so some adapter mixtures genuinely hurt.
A fifth task, support-ticket topics, has a different label set but reuses much of the
same vocabulary. ``write_demo_domains`` writes everything as JSON lines.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

DEMO_DOMAINS: dict[str, str] = {
    "books": "book reviews, binary sentiment (0=negative, 1=positive)",
    "movies": "film reviews, binary sentiment (0=negative, 1=positive)",
    "electronics": "gadget reviews, binary sentiment (0=negative, 1=positive)",
    "kitchen": "kitchenware reviews, binary sentiment (0=negative, 1=positive)",
    "support": "customer support tickets, 3-way topic (0=billing, 1=shipping, 2=technical)",
}
DOMAIN_LABELS: dict[str, tuple[str, ...]] = {
    **{d: ("negative", "positive") for d in ("books", "movies", "electronics", "kitchen")},
    "support": ("billing", "shipping", "technical"),
}
SPLITS = ("train", "validation", "test")

NOUNS: dict[str, tuple[str, ...]] = {
    "books": ("novel", "memoir", "thriller", "paperback", "story collection", "fantasy series"),
    "movies": ("film", "movie", "sequel", "documentary", "romantic comedy", "war drama"),
    "electronics": ("laptop", "phone", "tablet", "headset", "smartwatch", "speaker"),
    "kitchen": ("blender", "kettle", "frying pan", "toaster", "coffee maker", "knife set"),
}
OPENERS: dict[str, tuple[str, ...]] = {
    "books": ("I read this {noun} {when}.", "I picked up the {noun} {when}.", "My book club chose this {noun}."),
    "movies": ("I watched this {noun} {when}.", "We streamed the {noun} {when}.", "I saw the {noun} in a theater."),
    "electronics": ("I bought this {noun} {when}.", "I have used the {noun} for a month.", "I got the {noun} {when}."),
    "kitchen": ("I bought this {noun} {when}.", "We use the {noun} every day.", "I got the {noun} {when}."),
    "support": ("I ordered the {noun} {when}.", "This is about my {noun} order.", "Hello, I need help with my {noun}."),
}
WHENS = ("last week", "on a friend's advice", "after reading the reviews", "as a gift",
         "on sale", "over the holidays", "for my sister", "before a trip")
FILLERS = ("It came in a plain box.", "I am writing this after a few weeks.", "My partner tried it too.",
           "I had seen it mentioned online.", "That is my honest take.", "I may update this later.")

# Cues that mean the same thing in every review domain (label -> sentences).
SHARED_CUES: dict[int, tuple[str, ...]] = {
    1: ("It is excellent.", "Highly recommended.", "Worth every penny.", "I absolutely love it.",
        "Five stars from me.", "Really great overall."),
    0: ("What a waste of money.", "It is terrible.", "Very disappointing.", "I would not recommend it.",
        "One star from me.", "Really awful overall."),
}
# Mild cues about the purchase rather than the product; sometimes they contradict the label.
WEAK_CUES: dict[int, tuple[str, ...]] = {
    1: ("Delivery was quick.", "The packaging was nice.", "The price was fair."),
    0: ("The box arrived dented.", "It was a bit pricey.", "The instructions were vague."),
}
# Cues that only occur in one domain (domain -> label -> sentences).
DOMAIN_CUES: dict[str, dict[int, tuple[str, ...]]] = {
    "books": {1: ("The prose is beautifully written.", "I could not put it down.", "The characters feel real."),
              0: ("The characters are flat.", "The prose is clumsy.", "I gave up halfway through.")},
    "movies": {1: ("The cinematography is stunning.", "The cast gives strong performances.", "The soundtrack is gorgeous."),
               0: ("The acting is wooden.", "The plot is full of holes.", "I walked out before the end.")},
    "electronics": {1: ("The screen is crisp and bright.", "It charges fast.", "Setup took two minutes."),
                    0: ("It stopped working after a week.", "The app keeps crashing.", "The screen flickers.")},
    "kitchen": {1: ("It is easy to clean.", "The handle feels sturdy.", "It heats evenly."),
                0: ("It rusted within a month.", "The lid cracked.", "The coating peels off.")},
}
# Words whose polarity depends on the domain (word -> domain -> (label, sentence)).
CONFLICTING_CUES: dict[str, dict[str, tuple[int, str]]] = {
    "unpredictable": {"books": (1, "The plot is unpredictable."), "movies": (1, "The twists are unpredictable."),
                      "electronics": (0, "The touchscreen is unpredictable."),
                      "kitchen": (0, "The temperature is unpredictable.")},
    "long": {"electronics": (1, "The battery lasts long."), "kitchen": (1, "The cord is long enough."),
             "books": (0, "The chapters run long."), "movies": (0, "The film runs long.")},
    "light": {"electronics": (1, "It is light to carry."), "kitchen": (1, "It is light in the hand."),
              "books": (0, "The plot is light."), "movies": (0, "The story is light.")},
    "cold": {"kitchen": (1, "It keeps drinks cold."), "books": (0, "The narrator is cold."),
             "movies": (0, "The lead feels cold.")},
    "quiet": {"kitchen": (1, "The motor is quiet."), "electronics": (1, "The fan is quiet."),
              "books": (0, "The story is quiet."), "movies": (0, "The film is quiet.")},
    "slow": {"books": (1, "It is a slow burn."), "movies": (0, "The pacing is slow."),
             "electronics": (0, "The processor is slow."), "kitchen": (0, "It is slow to heat.")},
}
# Support-ticket topics reuse review vocabulary ("arrived dented", "stopped working").
TOPIC_CUES: dict[int, tuple[str, ...]] = {
    0: ("I was charged twice.", "Please send me a refund.", "The invoice shows the wrong amount.",
        "My credit card was billed again.", "I want to cancel the subscription.", "The discount code did not apply."),
    1: ("The package never arrived.", "The tracking number does not work.", "The courier left it at the wrong address.",
        "Delivery is two weeks late.", "The box arrived dented.", "I need to change the delivery address."),
    2: ("It stopped working after a week.", "The app keeps crashing.", "It will not turn on.",
        "The screen flickers.", "I get an error message on startup.", "The firmware update failed."),
}
TICKET_FILLERS = ("Thanks in advance.", "Please get back to me soon.", "I have attached a photo.",
                  "This is my second message.", "My order number is in the subject line.")

SPECIFIC_ONLY_SHARE = 0.2  # examples with no shared cue: only domain-specific or conflicting ones
WEAK_CUE_SHARE = 0.25  # examples with a weak cue, half of them contradicting the label
MIN_WORDS = 10
_MAX_CONSECUTIVE_DUPLICATES = 1000


def _opener(domain: str, rng: random.Random) -> str:
    """Returns a neutral first sentence naming a product of the domain."""
    nouns = NOUNS["electronics"] + NOUNS["kitchen"] if domain == "support" else NOUNS[domain]
    return rng.choice(OPENERS[domain]).format(noun=rng.choice(nouns), when=rng.choice(WHENS))


def _domain_cue(domain: str, label: int, rng: random.Random) -> str:
    """Returns a cue sentence only this domain uses, conflicting-word cues half of the time."""
    conflicting = [per[domain][1] for per in CONFLICTING_CUES.values()
                   if domain in per and per[domain][0] == label]
    if conflicting and rng.random() < 0.5:
        return rng.choice(conflicting)
    return rng.choice(DOMAIN_CUES[domain][label])


def _review_text(domain: str, label: int, rng: random.Random) -> str:
    """Returns one review whose label follows from its shared, domain or conflicting cues."""
    if rng.random() < SPECIFIC_ONLY_SHARE:
        cues = {_domain_cue(domain, label, rng) for _ in range(rng.randint(1, 2))}
    else:
        cues = {rng.choice(SHARED_CUES[label])}
        if rng.random() < 0.7:
            cues.add(_domain_cue(domain, label, rng))
    body = sorted(cues)
    if rng.random() < WEAK_CUE_SHARE:
        body.append(rng.choice(WEAK_CUES[label if rng.random() < 0.5 else 1 - label]))
    return _assemble(_opener(domain, rng), body, FILLERS, rng)


def _ticket_text(label: int, rng: random.Random) -> str:
    """Returns one support ticket about the topic ``label``, sometimes mentioning another."""
    body = rng.sample(TOPIC_CUES[label], rng.randint(1, 2))
    if len(body) == 2 and rng.random() < 0.3:
        body.append(rng.choice(TOPIC_CUES[rng.choice([t for t in TOPIC_CUES if t != label])]))
    if rng.random() < 0.35:  # sentiment says nothing about the topic
        body.append(rng.choice(SHARED_CUES[0 if rng.random() < 0.8 else 1]))
    return _assemble(_opener("support", rng), body, TICKET_FILLERS, rng)


def _assemble(opener: str, body: list[str], fillers: tuple[str, ...], rng: random.Random) -> str:
    """Returns opener + shuffled body sentences, padded with filler to at least MIN_WORDS words."""
    body = list(body)
    if rng.random() < 0.4:
        body.append(rng.choice(fillers))
    rng.shuffle(body)
    text = " ".join([opener, *body])
    unused = [f for f in fillers if f not in text]
    while len(text.split()) < MIN_WORDS and unused:
        text += " " + unused.pop(rng.randrange(len(unused)))
    return text


def _counts_per_label(n: int, n_labels: int) -> list[int]:
    """Returns how many of ``n`` examples each label gets: equal, the remainder to the first labels."""
    return [n // n_labels + (1 if i < n % n_labels else 0) for i in range(n_labels)]


def _domain_splits(domain: str, sizes: dict[str, int], rng: random.Random) -> dict[str, list[dict[str, object]]]:
    """Returns split -> shuffled rows for one domain, with no text repeated anywhere in it."""
    n_labels = len(DOMAIN_LABELS[domain])
    counts = {split: _counts_per_label(n, n_labels) for split, n in sizes.items()}
    seen: set[str] = set()
    pools: dict[int, list[str]] = {}
    for label in range(n_labels):
        needed = sum(c[label] for c in counts.values())
        pool: list[str] = []
        misses = 0  # consecutive duplicates: the templates are close to exhausted
        while len(pool) < needed and misses < _MAX_CONSECUTIVE_DUPLICATES:
            text = _ticket_text(label, rng) if domain == "support" else _review_text(domain, label, rng)
            if text in seen:
                misses += 1
                continue
            seen.add(text)
            pool.append(text)
            misses = 0
        if len(pool) < needed:
            raise ValueError(f"cannot build {needed} distinct {domain!r} texts for label {label}; "
                             f"got {len(pool)}: ask for fewer examples")
        pools[label] = pool
    splits: dict[str, list[dict[str, object]]] = {}
    for split in sizes:
        rows: list[dict[str, object]] = [
            {"text": pools[label].pop(), "label": label} for label in range(n_labels)
            for _ in range(counts[split][label])
        ]
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def _write_jsonl_atomic(path: Path, rows: list[dict[str, object]]) -> None:
    """Writes ``rows`` as UTF-8 JSON lines to ``path`` via a temp file and ``os.replace``; a file
    that already holds exactly these bytes is left alone (its modification time too: the store's
    kept evaluations are fingerprinted by their data files' names, sizes and times, so a demo run
    again reads its baselines back instead of evaluating them again)."""
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if path.is_file() and path.stat().st_size == len(payload) and path.read_bytes() == payload:
        return
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_demo_domains(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_train: int = 400,
    n_validation: int = 100,
    n_test: int = 100,
) -> dict[str, Path]:
    """Returns domain -> folder after writing ``<out_dir>/<domain>/{train,validation,test}.jsonl``.

    Each line is ``{"text": str, "label": int}``. Labels are balanced in every split (counts
    differ by at most one when a size is not divisible by the number of labels). The same
    seed gives byte-identical files; each file is replaced atomically, and one that already holds
    the same bytes is not written again.

    Raises:
        ValueError: a split size is not a positive integer, or too many examples were asked for.
    """
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_{name} must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    folders: dict[str, Path] = {}
    for domain in DEMO_DOMAINS:
        # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and
        # machines, and each domain's texts do not depend on which other domains exist.
        rng = random.Random(f"signmix-demo:{seed}:{domain}")
        splits = _domain_splits(domain, sizes, rng)
        folder = Path(out_dir) / domain
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            _write_jsonl_atomic(folder / f"{split}.jsonl", splits[split])
        folders[domain] = folder
    return folders
