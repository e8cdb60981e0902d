"""Where the black-box attack finds its word substitutions, offline.

Two sources, chosen by ``search.blackbox_attack.synonyms``:

* ``embedding``: the nearest neighbours of a word in the base encoder's own input embedding
  matrix, by cosine; only whole-word vocabulary entries (no ``##`` pieces, letters only),
  never a stop word, the word itself or one of its own forms (``good`` -> ``goods``).
  The source knows no part of speech.
* ``wordnet``: the other lemmas of the WordNet synsets the word is a lemma of, read with
  ``nltk``'s WordNet reader from a folder (Debian's ``wordnet-base`` at ``/usr/share/wordnet``,
  or an NLTK data folder holding ``corpora/wordnet``). A candidate comes from a synset of the
  word, so it shares that synset's part of speech; single words only, most frequent sense first.

Both return ``(candidate, similarity)`` pairs, best first; WordNet synonyms are synonyms, so
their similarity is 1.0 (the similarity floor only filters the embedding source).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Protocol, Sequence

from spaces.errors import UsageError

# English stop words (the ones TextFooler never replaces, and never proposes).
STOP_WORDS = frozenset("""
a about above across after afterwards again against ain all almost alone along already also although am among
amongst an and another any anyhow anyone anything anyway anywhere are aren aren't around as at back be became
because been before beforehand behind being below beside besides between beyond both but by can cannot could
couldn couldn't d didn didn't doesn doesn't don don't down due during either else elsewhere empty enough even ever
everyone everything everywhere except first for former formerly from hadn hadn't hasn hasn't haven haven't he hence
her here hereafter hereby herein hereupon hers herself him himself his how however hundred i if in indeed into is
isn isn't it it's its itself just latter latterly least ll may me meanwhile mightn mightn't mine more moreover most
mostly must mustn mustn't my myself namely needn needn't neither never nevertheless next no nobody none noone nor
not nothing now nowhere o of off on once one only onto or other others otherwise our ours ourselves out over per
please s same shan shan't she she's should've shouldn shouldn't somehow something sometime somewhere such t than
that that'll the their theirs them themselves then thence there thereafter thereby therefore therein thereupon
these they this those through throughout thru thus to too toward towards under unless until up upon used ve was
wasn wasn't we were weren weren't what whatever when whence whenever where whereafter whereas whereby wherein
whereupon wherever whether which while whither who whoever whole whom whose why with within without won won't
would wouldn wouldn't y yet you you'd you'll you're you've your yours yourself yourselves have be do does did has
had having will shall
""".split())

SYNONYM_SOURCES = ("embedding", "wordnet")
DEFAULT_WORDNET_FOLDER = "/usr/share/wordnet"
WORDNET_INSTALL_HINT = ("install it with 'apt-get install wordnet-base wordnet-sense-index' (Debian/Ubuntu: "
                        "/usr/share/wordnet), or "
                        "point search.blackbox_attack.wordnet_folder at an NLTK data folder holding corpora/wordnet")
# What makes a folder a WordNet database: the index and data file of every part of speech.
WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")) + (
    "index.sense",)

_SUFFIXES = ("ness", "ment", "ings", "ing", "ies", "ied", "est", "ers", "ly", "es", "ed", "er", "s", "y")
_WORD = re.compile(r"[a-z]+")


class SynonymSource(Protocol):
    def candidates(self, word: str, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` substitutes of ``word`` (lowercase) with their similarity, best first."""


def stem(word: str) -> str:
    """A crude stem: ``word`` without one common English suffix (for "its own forms")."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def is_own_form(word: str, candidate: str) -> bool:
    """Whether ``candidate`` is ``word`` or one of its forms (a prefix of the other, or one stem)."""
    return candidate.startswith(word) or word.startswith(candidate) or stem(word) == stem(candidate)


class EmbeddingSynonyms:
    """Nearest whole-word neighbours by cosine in an input embedding matrix (see the module).

    Args:
        tokens: the vocabulary, index -> token string (``tokenizer.convert_ids_to_tokens``).
        embeddings: the ``(vocab, dim)`` input embedding matrix (a torch tensor).
    """

    def __init__(self, tokens: Sequence[str], embeddings) -> None:
        import torch

        words = {}
        for i, tok in enumerate(tokens):
            word = tok[1:] if tok[:1] in ("\u2581", "\u0120") else tok  # SentencePiece / byte-BPE word starts
            if tok.startswith("##") or not _WORD.fullmatch(word) or len(word) < 2 or word in STOP_WORDS:
                continue
            words.setdefault(word, i)  # the first id of a word (BPE vocabularies hold several)
        self.words = sorted(words)
        ids = torch.tensor([words[w] for w in self.words], dtype=torch.long)
        matrix = embeddings.detach().float().cpu()[ids]
        self._unit = torch.nn.functional.normalize(matrix, dim=1)
        self._index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_model(cls, model, tokenizer) -> "EmbeddingSynonyms":
        """The source over ``model``'s input embeddings and ``tokenizer``'s vocabulary."""
        weight = model.get_input_embeddings().weight
        # rows beyond the tokenizer are padding; tokens beyond the matrix (added, not resized) have no vector
        tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), weight.shape[0]))))
        return cls(tokens, weight)

    @functools.lru_cache(maxsize=20000)
    def candidates(self, word: str, k: int) -> list[tuple[str, float]]:
        i = self._index.get(word)
        if i is None:  # not one whole-word entry: the encoder splits it into pieces
            return []
        sims = self._unit @ self._unit[i]
        top = sims.topk(min(len(self.words), 4 * k + 16))  # room for the excluded forms
        pairs = sorted(((self.words[j], round(float(s), 6)) for s, j in zip(top.values.tolist(), top.indices.tolist())),
                       key=lambda p: (-p[1], p[0]))
        return [(w, s) for w, s in pairs if not is_own_form(word, w)][:k]


def wordnet_folder(folder: str | os.PathLike) -> Path:
    """The folder holding the WordNet database files under ``folder`` (the folder itself, or an
    NLTK data folder's ``corpora/wordnet``); a :class:`UsageError` naming the setting otherwise."""
    root = Path(folder).expanduser()
    for candidate in (root, root / "corpora" / "wordnet"):
        if all((candidate / f).is_file() for f in WORDNET_FILES):
            return candidate
    what = "does not exist" if not root.exists() else f"is not a WordNet database (it needs {', '.join(WORDNET_FILES)})"
    raise UsageError(f"search.blackbox_attack.wordnet_folder {str(folder)!r} {what}: {WORDNET_INSTALL_HINT}")


# WordNet 3.0's lexicographer files (lexnames(5WN)). nltk's reader opens a 'lexnames' file that
# Debian's wordnet-base does not ship; it is staged beside links to the database files.
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object
noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state
noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative
verb.weather adj.ppl""".split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _nltk_data_root(folder: Path) -> Path:
    """An NLTK data folder whose ``corpora/wordnet`` is the database in ``folder``: the folder's
    own root when it is one already, else a copy made once in the user's cache with ``lexnames``
    added (nltk's reader opens it; Debian does not ship it, and nltk refuses links that leave
    the folder it reads)."""
    if folder.parts[-2:] == ("corpora", "wordnet") and (folder / "lexnames").is_file():
        return folder.parents[1]
    stamp = f"{folder.resolve()}:{(folder / 'data.noun').stat().st_mtime_ns}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "signmix"
    root = cache / f"nltk-wordnet-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
    if not (root / "corpora" / "wordnet" / "lexnames").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix="nltk-wordnet-partial-", dir=cache))
        staged = partial / "corpora" / "wordnet"
        staged.mkdir(parents=True)
        for f in folder.iterdir():
            if f.is_file():
                shutil.copyfile(f, staged / f.name)
        if not (staged / "lexnames").is_file():
            (staged / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n"
                                                     for i, name in enumerate(LEXNAMES)))
        try:
            partial.rename(root)  # whole or not at all; another process may have been first
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return root


class WordNetSynonyms:
    """Synonyms from a WordNet database folder through ``nltk``'s reader (see the module)."""

    def __init__(self, folder: str | os.PathLike = DEFAULT_WORDNET_FOLDER) -> None:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = _nltk_data_root(wordnet_folder(folder))
        # nltk reads only from folders it is told to trust (nltk.data.path): this one was named in the config.
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The multilingual functions are not available")
            self.reader = WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)

    @functools.lru_cache(maxsize=20000)
    def candidates(self, word: str, k: int) -> list[tuple[str, float]]:
        found: list[str] = []
        for synset in self.reader.synsets(word):  # most frequent sense first
            names = [lemma.name() for lemma in synset.lemmas()]
            if word not in (n.lower() for n in names):  # a sense of another form (movies -> movie)
                continue
            for name in names:
                c = name.lower()
                if _WORD.fullmatch(c) and c not in STOP_WORDS and not is_own_form(word, c) and c not in found:
                    found.append(c)
        return [(c, 1.0) for c in found[:k]]


@functools.lru_cache(maxsize=4)
def wordnet_synonyms(folder: str) -> WordNetSynonyms:
    """One WordNet source per folder and process (reading the database takes seconds)."""
    return WordNetSynonyms(folder)
