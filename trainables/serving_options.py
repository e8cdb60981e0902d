"""A group's domains served from its shared body in each serving option, chosen per domain on validation.

One forward setup per group (a :class:`trainables.evaluate.MixtureModel` holding every
domain's head, the tokenised splits cached per process) scores each of
:data:`SERVING_OPTIONS` for every domain of the group:

- ``plain``: the group's body as it is (what the plan's body search scored);
- ``rescaled``: the body, each domain's bottleneck output times one scalar
  (:func:`trainables.domain_serving.per_row_adapter_scale`: rows of different domains still
  share one pass), chosen on the domain's validation split among 1.0 and EMR's formula times
  :data:`spaces.domain_masks.RESCALER_FACTORS`. The formula's start over a body that is not
  EMR's is EMR's rescaler with the all-ones mask: ``sum|tau_t| / sum|body - init|``;
- ``emr``: EMR-Merging's own body (``init + tau_uni``, :func:`trainables.domain_serving.emr_merge`),
  each domain its agreement mask and its scalar on the masked delta, chosen on validation among
  EMR's formula times the same factors (the formula itself is one of them);
- ``tall``: the group's body, each domain its TALL mask, lambda chosen on validation among
  :data:`spaces.domain_masks.TALL_LAMBDAS`.

Each option's chosen value is then scored on the other splits asked for. The candidates of
a domain are scored in sorted order and the best wins, ties to the one closest to the start
(:func:`spaces.domain_masks.choose_on_validation`). Only bottleneck adapters with each
domain's trained head (``search.head: own``): a mask or rescaler moves the features a refit
head was fit on, and a LoRA's masks act on ΔW (:mod:`trainables.domain_serving`).

What a domain's serving costs beyond its body (:func:`extra_bytes`): a float32 scalar
(4 bytes) for a rescaler, the packed mask (1 bit per adapter parameter, 1/32 of the adapter's
float32 bytes) for a mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from spaces.domain_masks import (
    MASKED_OPTIONS,
    RESCALER_FACTORS,
    SERVING_OPTIONS,
    TALL_LAMBDAS,
    choose_on_validation,
    packed_bytes,
    rescaler_candidates,
)
from trainables.domain_serving import emr_merge, masked_body, per_row_adapter_scale, tall_merge_masks

if TYPE_CHECKING:
    from torch import Tensor

    from trainables.data import EncodedSplit

logger = logging.getLogger(__name__)

SCALAR_BYTES = 4  # one float32


@dataclass(frozen=True)
class DomainServing:
    """How one option serves one domain: the value chosen on validation and the rows it gets right."""

    option: str
    value: float  # rescaled: the output scalar; emr: the scalar on the masked delta; tall: lambda; plain: 1.0
    start: float  # where the choice started (EMR's formula; 1.0 for plain; tall: the grid's middle)
    scores: dict[float, float]  # candidate -> validation accuracy
    correct: dict[str, list[int]] = field(default_factory=dict)  # split -> per-example 0/1
    extra_bytes: int = 0  # what serving this domain costs beyond its body

    def accuracy(self, split: str = "validation") -> float:
        rows = self.correct[split]
        return sum(rows) / len(rows) if rows else float("nan")

    def to_dict(self) -> dict:
        return {"option": self.option, "value": self.value, "start": self.start,
                "scores": {str(k): v for k, v in self.scores.items()}, "correct": self.correct,
                "extra_bytes": self.extra_bytes}

    @classmethod
    def from_dict(cls, d: Mapping) -> DomainServing:
        return cls(option=d["option"], value=float(d["value"]), start=float(d["start"]),
                   scores={float(k): float(v) for k, v in d["scores"].items()},
                   correct={s: list(v) for s, v in d["correct"].items()}, extra_bytes=int(d["extra_bytes"]))


def check_options(options: Sequence[str]) -> list[str]:
    """``options`` in :data:`SERVING_OPTIONS` order; raises ValueError naming an unknown one."""
    unknown = [o for o in options if o not in SERVING_OPTIONS]
    if unknown or not options:
        raise ValueError(f"serving options must be some of {list(SERVING_OPTIONS)}, got {list(options)}")
    return [o for o in SERVING_OPTIONS if o in options]


def adapter_numel(weights: Mapping[str, Tensor]) -> int:
    """The number of parameters of one adapter body."""
    return sum(int(t.numel()) for t in weights.values())


def extra_bytes(option: str, numel: int) -> int:
    """What serving one domain with ``option`` costs beyond its body, in bytes: a float32 scalar per
    rescaler, a mask packed at 1 bit per parameter (each parameter packed on its own rounds up to
    a byte; counted here over the whole adapter, the exact sizes are in the bundle)."""
    check_options([option])
    mask = packed_bytes(numel) if option in MASKED_OPTIONS else 0
    scalar = SCALAR_BYTES if option in ("rescaled", "emr") else 0
    return mask + scalar


def emr_start(member: Mapping[str, Tensor], body: Mapping[str, Tensor], init: Mapping[str, Tensor]) -> float:
    """EMR's rescaler formula over a body that is not EMR's (mask all ones): ``sum|tau_t| / sum|body - init|``
    in float64; 1.0 where the body equals ``init``."""
    num = sum(float((member[k].double() - init[k].double()).abs().sum()) for k in body)
    den = sum(float((body[k].double() - init[k].double()).abs().sum()) for k in body)
    return num / den if den > 0 else 1.0


def serve_group(model, body: Mapping[str, Tensor], init: Mapping[str, Tensor], members: Mapping[str, Mapping],
                domains: Sequence[str], *, encoded: Callable[[str, str], EncodedSplit], batch_size: int,
                options: Sequence[str] = SERVING_OPTIONS, splits: Sequence[str] = ("validation",),
                factors: Sequence[float] = RESCALER_FACTORS, lambdas: Sequence[float] = TALL_LAMBDAS,
                progress: Callable[[str], None] = logger.info) -> dict[str, dict[str, DomainServing]]:
    """Score each serving option for each domain of a group; returns option -> domain -> :class:`DomainServing`.

    Args:
        model: a :class:`trainables.evaluate.MixtureModel` (a bottleneck adapter slot, each
            domain's trained head); its adapter weights are overwritten.
        body: the group's merged body (the model's parameter names), as its search built it.
        init: the adapters' shared initialisation (same names).
        members: domain -> its own adapter's weights, for every domain of ``domains``.
        domains: the group's domains (each served by ``body``).
        encoded: (domain, split) -> the tokenised split (e.g. :func:`trainables.evaluate.encoded_split`).
        batch_size: rows per forward pass.
        options: some of :data:`SERVING_OPTIONS`.
        splits: the splits each option's chosen value is scored on; validation always (it chooses).
        factors: multiples of EMR's formula a rescaler tries.
        lambdas: the TALL lambdas tried.
    """
    from trainables.evaluate import predict

    options = check_options(options)
    domains = list(domains)
    missing = [d for d in domains if d not in members]
    if missing:
        raise ValueError(f"members lacks the own adapters of {missing}")
    splits = ["validation", *[s for s in splits if s != "validation"]]
    numel = adapter_numel(body)
    group = "+".join(domains)

    def rows(domain: str, split: str) -> list[int]:
        model.use_head(domain)
        enc = encoded(domain, split)
        preds = predict(model.model, enc, batch_size)
        return [int(preds[r] == enc.labels[r]) for r in range(len(enc))]

    def acc(correct: list[int]) -> float:
        return sum(correct) / len(correct) if correct else float("nan")

    def choose(option: str, domain: str, candidates: Sequence[float], start: float,
               setup: Callable[[float], object]) -> DomainServing:
        """Score each candidate on validation (``setup(c)`` readies the model, returns a context or
        None), keep the best, then score it on the other splits."""
        import contextlib

        seen: dict[float, list[int]] = {}

        def run(c: float, split: str) -> list[int]:
            ctx = setup(c)
            with ctx if ctx is not None else contextlib.nullcontext():
                return rows(domain, split)

        def score(c: float) -> float:
            seen[c] = run(c, "validation")
            return acc(seen[c])

        chosen, scores = choose_on_validation(score, candidates, start)
        correct = {"validation": seen[chosen] if chosen in seen else run(chosen, "validation")}
        for split in splits[1:]:
            correct[split] = run(chosen, split)
        return DomainServing(option=option, value=float(chosen), start=float(start), scores=scores, correct=correct,
                             extra_bytes=extra_bytes(option, numel))

    out: dict[str, dict[str, DomainServing]] = {}
    if "plain" in options or "rescaled" in options:
        model.set_weights(body)
    if "plain" in options:
        out["plain"] = {d: choose("plain", d, [1.0], 1.0, lambda c: None) for d in domains}
        progress(f"serving {group}: plain body scored")
    if "rescaled" in options:
        model.set_weights(body)
        out["rescaled"] = {}
        for d in domains:
            start = emr_start(members[d], body, init)
            candidates = sorted({1.0, *rescaler_candidates(start, factors)})
            out["rescaled"][d] = choose("rescaled", d, candidates, start,
                                        lambda c: per_row_adapter_scale(model.model, c))
        progress(f"serving {group}: output rescalers chosen ("
                 + ", ".join(f"{d} {s.value:.3g}" for d, s in out["rescaled"].items()) + ")")
    if "tall" in options:
        by_lambda = {lam: tall_merge_masks([members[d] for d in domains], init, body, lam) for lam in lambdas}
        out["tall"] = {}
        for i, d in enumerate(domains):
            def tall_setup(lam: float, i=i):
                model.set_weights(masked_body(init, body, by_lambda[lam][i]))
            start = sorted(lambdas)[len(lambdas) // 2]
            out["tall"][d] = choose("tall", d, lambdas, start, tall_setup)
        progress(f"serving {group}: TALL masks chosen ("
                 + ", ".join(f"{d} λ {s.value:.2g}" for d, s in out["tall"].items()) + ")")
    if "emr" in options:
        emr_body, masks, scalars = emr_merge([members[d] for d in domains], init)
        out["emr"] = {}
        for i, d in enumerate(domains):
            def emr_setup(scale: float, i=i):
                model.set_weights(masked_body(init, emr_body, masks[i], scale))
            out["emr"][d] = choose("emr", d, rescaler_candidates(scalars[i], factors), scalars[i], emr_setup)
        progress(f"serving {group}: EMR masks and rescalers chosen ("
                 + ", ".join(f"{d} {s.value:.3g}" for d, s in out["emr"].items()) + ")")
    model.set_weights(body)
    return {o: out[o] for o in options}


def emr_body(members: Sequence[Mapping[str, Tensor]], init: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """EMR-Merging's body ``init + tau_uni`` of ``members`` (what option ``emr`` serves from)."""
    return emr_merge(members, init)[0]


def domain_mask(option: str, members: Sequence[Mapping[str, Tensor]], init: Mapping[str, Tensor],
                body: Mapping[str, Tensor], member: int, value: float) -> dict[str, Tensor] | None:
    """The mask option ``option`` serves member ``member`` with over ``body`` (None for plain and rescaled):
    EMR's agreement mask (``body`` must be :func:`emr_body`), or TALL's with lambda ``value``."""
    check_options([option])
    if option == "emr":
        return emr_merge(members, init)[1][member]
    if option == "tall":
        return tall_merge_masks(members, init, body, value)[member]
    return None


SERVING_FILE = "serving.json"


def serving_options_trial(config: Mapping, *, adapter_weights: Mapping, experiment, store_root: str) -> None:
    """Ray Tune trial: one group's body (``config["spec"]``, its targets the group) served in each of
    ``config["options"]``, chosen on validation and scored on ``config["splits"]``; reports
    ``{option: {domain: DomainServing.to_dict()}}`` as a checkpoint (``serving.json``)."""
    import json
    import tempfile
    from pathlib import Path

    import torch
    from ray import tune

    from spaces.spec import MixtureSpec
    from trainables.evaluate import encoded_split, mixture_model
    from trainables.mixture_trial import INIT_KEY, fetch_members, load_mixture

    torch.set_num_threads(max(1, int(experiment.resources.cpu)))
    model = mixture_model(experiment, store_root)  # one forward setup per worker, every option on it
    spec = MixtureSpec.from_dict(config["spec"])
    group = sorted(spec.targets)  # the order the export computes the masks in
    body = load_mixture(model, spec, adapter_weights, experiment)
    for d in group:
        model.add_head(d)
    members = fetch_members(adapter_weights, group)
    init = fetch_members(adapter_weights, [INIT_KEY])[INIT_KEY]
    served = serve_group(model, body, init, members, group,
                         encoded=lambda d, split: encoded_split(experiment, d, split, model.label_names[d]),
                         batch_size=experiment.evaluation.batch_size, options=config["options"],
                         splits=config["splits"])
    with tempfile.TemporaryDirectory(prefix="signmix-serving-") as tmp:
        Path(tmp, SERVING_FILE).write_text(json.dumps({o: {d: s.to_dict() for d, s in per.items()}
                                                       for o, per in served.items()}), encoding="utf-8")
        tune.report({"domains": len(group)}, checkpoint=tune.Checkpoint.from_directory(tmp))


__all__ = ["DomainServing", "MASKED_OPTIONS", "SERVING_OPTIONS", "adapter_numel", "check_options", "domain_mask",
           "emr_body", "emr_start", "extra_bytes", "serve_group", "serving_options_trial"]
