"""A new domain with a few labelled examples and no adapter of its own (``domains.<d>.train: false``).

The search mixes the other domains' adapters for it (its head refit on its few examples); this
module adds what the user would otherwise pick to the test-split confirmation
(:mod:`search.workflows.confirmation`), each built from the same few examples:

- ``base``: the base encoder with a refit head and no adapter (every member pruned 100%: a zero
  bottleneck adapter or LoRA update is the identity, so the model is the base encoder);
- ``fine_tuned``: an adapter trained on the few examples, with its trained head (``signmix
  train`` trains it into the store under the domain's name; it is never a member);
- ``soup_all``: the uniform soup of every adapter, refit head (AdapterSoup's baseline);
- ``adaptersoup``: AdapterSoup's selection: the ``search.adaptersoup_k`` domains whose training
  texts are nearest the new domain's (cosine of the base encoder's mean-pooled sentence
  embeddings, :mod:`trainables.embeddings`), uniformly averaged, refit head;
- ``best_single``: the single adapter with the best validation accuracy under a refit head.

Then, per target, the chosen mixture's lead over each on the test split with its paired
bootstrap interval and McNemar's p; "beaten" means the interval lies above 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from search.settings.config import Config
from spaces.errors import DataError, StoreError, UsageError
from spaces.spec import make_mixture_spec
from trainables.data import load_domain
from trainables.embeddings import domain_centroids, most_similar
from trainables.settings import train_draw
from trainables.significance import mcnemar_exact, paired_bootstrap, paired_difference
from trainables.store import AdapterStore, load_sign_index

CONFIDENCE = 0.95
# Training texts per domain whose mean embedding stands for the domain (AdapterSoup's selection).
SIMILARITY_TEXTS = 100
BASELINES = {
    "base": "base encoder + refit head",
    "fine_tuned": "adapter trained on the few examples",
    "soup_all": "uniform soup of all adapters + refit head",
    "adaptersoup": "AdapterSoup selection + refit head",
    "best_single": "best single adapter + refit head",
}
SINGLE_PREFIX = "nd_single/"
# The confirmation's name of the best single adapter on validation when it competes for the export
# (one data-only target): a one-body baseline like the soup and TIES of all.
BEST_SINGLE = "best_single"


def new_domain_targets(cfg: Config, targets: Sequence[str]) -> list[str]:
    """The data-only domains among ``targets``."""
    return [t for t in targets if not cfg.domains[t].train]


def confirmation_weights(cfg: Config, targets) -> tuple[dict, object]:
    """The members' weights and sign index, with each data-only target's adapter trained on its few
    examples beside them (the confirmation's ``own/<t>``, the baselines' ``single <t>``: never a member of a
    searched mixture)."""
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    new = new_domain_targets(cfg, targets)
    if new:
        store = AdapterStore(cfg.store_path)
        missing = [t for t in new if t not in store.domains()]
        if missing:
            raise StoreError(f"the store {store.root} has no adapter trained on the few examples of {missing} "
                             "(the confirmation's baseline); run `signmix train CONFIG` first")
        weights = {**weights, **{t: store.load_weights(t) for t in new}}
    return weights, index


def check_new_domains(cfg: Config) -> None:
    """Before anything is written: every data-only domain has a training split with at least one
    labelled example per class (a refit head needs them). Raises UsageError (exit 2)."""
    for d in cfg.data_only_domains:
        domain = cfg.domains[d]
        cap, seed = train_draw(cfg.training, domain)
        try:
            data = load_domain(d, domain, splits=("train",), max_train_examples=cap, seed=seed,
                               trust_remote_code=cfg.trust_remote_code)
        except DataError as exc:
            raise DataError(f"domains.{d}: data-only (train: false), so its few labelled examples are its "
                            f"training split, which cannot be read: {exc}") from None
        n, k = len(data.splits["train"]), data.num_labels
        if n < k:
            field = (f"domains.{d}.max_train_examples" if domain.max_train_examples is not None
                     else "training.max_train_examples" if cap is not None else f"domains.{d} (training split)")
            raise UsageError(f"{field}: got {cap if cap is not None else n} labelled example(s) for data-only domain "
                             f"{d!r}, fewer than its {k} classes; a refit head needs at least one per class: "
                             f"allowed: {k} or more")


def similar_domains(cfg: Config, target: str, k: int) -> list[tuple[str, float]]:
    """AdapterSoup's selection for ``target``: the ``k`` member domains nearest it, with their cosines."""
    centroids = domain_centroids(cfg.experiment(targets=[target]), [target, *cfg.member_domains],
                                 max_texts=SIMILARITY_TEXTS)
    return most_similar(centroids, target, cfg.member_domains, k)


class SimilarityOrder:
    """What orders the greedy warm start of a search for a data-only target: the member adapters whose
    domains lie nearest the target's training texts first (AdapterSoup's ranking, :func:`similar_domains`),
    in place of the sign-conflict order, which knows nothing of the new domain. The path then tries the
    nearest adapter alone, the two nearest, ... (AdapterSoup's selection among them). After the singles
    (:func:`new_domain_start`) the path starts from the best single instead
    (``search.proposals.strategies.SinglesOrder``), this order among the adapters not scored alone."""

    def __init__(self, ranked: Sequence[tuple[str, float]]) -> None:
        self.ranked = list(ranked)

    def row_means(self) -> dict[str, float]:
        """Smaller first, as the greedy path ranks: the negated cosine."""
        return {d: -c for d, c in self.ranked}


def singles_to_score(ranked: Sequence[str], budget: int) -> tuple[list[str], list[str]]:
    """The library adapters a data-only target's search scores alone first (nearest first), and
    those it does not score alone.

    At most half the budget (and at least one mixture) goes to singles: the other half is left to
    combinations, which the greedy path and TPE then start from the best singles. Scoring every
    adapter alone would spend a 12-mixture budget on a library of 12 and leave no combination;
    the nearest by the similarity ranking are the likeliest to be the best single adapter."""
    n = min(len(ranked), max(1, budget // 2))
    return list(ranked[:n]), list(ranked[n:])


@dataclass(frozen=True)
class NewDomainStart:
    """How a search for one data-only target starts: the library adapters nearest its training
    texts first (``ranked``: name, cosine), the nearest ``singles`` each scored alone, the rest
    (``not_alone``) only in combinations, and the greedy warm start's order (None: no warm start)."""

    target: str
    ranked: tuple[tuple[str, float], ...]
    singles: tuple[str, ...]
    not_alone: tuple[str, ...]
    order: SimilarityOrder | None

    def summary_line(self) -> str:
        """The summary's sentence: which adapters were scored alone, and how many were not."""
        line = (f"singles first for data-only {self.target}: {len(self.singles)} library adapter(s) scored alone "
                f"before any combination, nearest first ({', '.join(self.singles)})")
        if self.not_alone:
            line += (f"; {len(self.not_alone)} library adapter(s) not scored alone, the budget being too small "
                     f"({', '.join(self.not_alone)}): raise search.num_mixtures to {2 * len(self.ranked)} to score "
                     "every one")
        return line


def new_domain_start(cfg: Config, progress=print) -> NewDomainStart | None:
    """How a search whose one target is data-only starts (None otherwise): singles first, then the
    greedy warm start (when ``search.warm_start`` is ``greedy_fsd``) from the best of them."""
    new = new_domain_targets(cfg, cfg.search.targets)
    if len(cfg.search.targets) != 1 or not new:
        return None
    ranked = similar_domains(cfg, new[0], len(cfg.member_domains))
    progress(f"data-only {new[0]}: the adapters nearest its training texts first: "
             + ", ".join(f"{d} ({c:.3f})" for d, c in ranked))
    singles, rest = singles_to_score([d for d, _ in ranked], cfg.search.num_mixtures)
    start = NewDomainStart(target=new[0], ranked=tuple(ranked), singles=tuple(singles), not_alone=tuple(rest),
                           order=SimilarityOrder(ranked) if cfg.search.warm_start == "greedy_fsd" else None)
    progress(start.summary_line())
    return start


def new_domain_candidates(cfg: Config, targets: Sequence[str], progress=print) -> dict[str, tuple]:
    """The confirmation's extra candidates for each data-only target: name -> (spec, splits).
    (``fine_tuned`` is the confirmation's ``own/<t>``: the adapter trained on the few examples.)"""
    members = cfg.member_domains
    cands: dict[str, tuple] = {}
    for t in new_domain_targets(cfg, targets):
        refit = {"targets": [t], "require_targets": False, "head": "refit"}
        cands[f"base/{t}"] = (make_mixture_spec(members=members[:1], prune_method="magnitude", prune_ratio=1.0,
                                                **refit), ["test"])
        cands[f"soup_all/{t}"] = (make_mixture_spec(members=members, **refit), ["test"])
        near = similar_domains(cfg, t, min(cfg.search.adaptersoup_k, len(members)))
        progress(f"AdapterSoup selection for {t}: " + ", ".join(f"{d} ({c:.3f})" for d, c in near))
        cands[f"adaptersoup/{t}"] = (make_mixture_spec(members=[d for d, _ in near], **refit), ["test"])
        for d in members:
            cands[f"{SINGLE_PREFIX}{t}/{d}"] = (make_mixture_spec(members=[d], **refit), ["validation"])
    return cands


def best_singles(correct: Mapping, targets: Sequence[str]) -> dict[str, str]:
    """Per data-only target, the candidate name of the single adapter with the best validation
    accuracy (ties: the first by name)."""
    out = {}
    for t in targets:
        prefix = f"{SINGLE_PREFIX}{t}/"
        names = sorted(n for n in correct if n.startswith(prefix))
        if names:
            out[t] = max(names, key=lambda n: (sum(correct[n]["validation"][t]) / len(correct[n]["validation"][t]),
                                               -names.index(n)))
    return out


def compare_baselines(correct: Mapping, specs: Mapping, chosen: str, targets: Sequence[str],
                      singles: Mapping[str, str], *, seed: int = 0) -> dict:
    """Per data-only target: the chosen mixture and each baseline on test (accuracy, 95% interval),
    the chosen mixture's lead over each (paired bootstrap interval), McNemar's p, and whether the
    lead's interval lies above 0 (``beaten``)."""
    out = {}
    for t in targets:
        names = {"base": f"base/{t}", "fine_tuned": f"own/{t}", "soup_all": f"soup_all/{t}",
                 "adaptersoup": f"adaptersoup/{t}", "best_single": singles.get(t)}
        columns = {"chosen": correct[chosen]["test"][t]}
        columns.update({b: correct[n]["test"][t] for b, n in names.items() if n and "test" in correct.get(n, {})})
        iv = paired_bootstrap(columns, confidence=CONFIDENCE, seed=seed)
        rows = {}
        for b, label in BASELINES.items():
            if b not in columns:
                continue
            d = paired_difference(columns["chosen"], columns[b], confidence=CONFIDENCE, seed=seed)
            rows[b] = {"label": label, "members": list(specs[names[b]].members) if b != "base" else [],
                       "accuracy": iv[b].accuracy, "ci_low": iv[b].low, "ci_high": iv[b].high,
                       "lead": d.lead, "lead_low": d.low, "lead_high": d.high,
                       "p": mcnemar_exact(columns["chosen"], columns[b]).p_value, "beaten": d.low > 0.0}
        out[t] = {"chosen": {"accuracy": iv["chosen"].accuracy, "ci_low": iv["chosen"].low,
                             "ci_high": iv["chosen"].high, "n": iv["chosen"].n,
                             "members": sorted(specs[chosen].members) if chosen in specs else []},
                  "baselines": rows}
    return out


def comparison_lines(comparison: Mapping) -> list[str]:
    """The summary's lines: each baseline's test accuracy, the chosen mixture's lead, and which it beats."""
    lines = []
    for t, c in comparison.items():
        lines.append(f"new domain {t}: chosen {c['chosen']['accuracy']:.3f} "
                     f"[{c['chosen']['ci_low']:.3f}, {c['chosen']['ci_high']:.3f}] (n {c['chosen']['n']}) against:")
        for b, r in c["baselines"].items():
            members = f" ({'+'.join(r['members'])})" if r["members"] and b != "soup_all" else ""
            lines.append(f"  {r['label']}{members}: {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]; "
                         f"lead {r['lead']:+.3f} [{r['lead_low']:+.3f}, {r['lead_high']:+.3f}], McNemar p "
                         f"{r['p']:.3g}" + ("; beaten beyond the interval" if r["beaten"] else ""))
        beaten = [r["label"] for r in c["baselines"].values() if r["beaten"]]
        lines.append(f"  the chosen mixture beats {', '.join(beaten) if beaten else 'none of them'} beyond the "
                     "interval")
        single = c["baselines"].get("best_single")
        if single is not None:
            lines.append(best_single_line(c["chosen"].get("members", []), single))
    return lines


def best_single_line(chosen_members: Sequence[str], single: Mapping) -> str:
    """Whether the chosen answer is the best single library adapter (picked on validation), and if
    not, where it stands against it on test: what a user who would have picked one adapter gets."""
    name = "+".join(single["members"])
    if sorted(chosen_members) == sorted(single["members"]):
        return f"  the chosen answer is the best single adapter ({name}) itself: the export is that one adapter"
    if single["beaten"]:
        where = "beats it beyond the interval"
    elif single["lead_high"] < 0.0:
        where = "is WORSE than it beyond the interval"
    else:
        where = "is level with it within the interval"
    return f"  the export is not the best single adapter: the best single adapter on validation was {name}; " \
           f"on test the chosen answer {where} " \
           f"(lead {single['lead']:+.3f} [{single['lead_low']:+.3f}, {single['lead_high']:+.3f}])"


def comparison_metrics(comparison: Mapping) -> dict[str, float]:
    """MLflow metrics of the comparison: ``nd_<baseline>_test_accuracy/<t>``, ``..._lead``, ``..._lead_low``,
    ``..._lead_high``, ``..._p``, ``..._beaten`` (1/0)."""
    m = {}
    for t, c in comparison.items():
        for b, r in c["baselines"].items():
            for key in ("accuracy", "ci_low", "ci_high", "lead", "lead_low", "lead_high", "p"):
                m[f"nd_{b}_{'test_' if key in ('accuracy', 'ci_low', 'ci_high') else ''}{key}/{t}"] = r[key]
            m[f"nd_{b}_beaten/{t}"] = float(r["beaten"])
    return m
