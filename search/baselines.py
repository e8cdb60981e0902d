"""Evaluating a few fixed mixtures in this process (single adapters, the soup of all).

Used for summaries and comparisons, not for searching: it reuses the trial's model,
mixing and evaluation code, so its numbers are comparable with the search's.
"""

from __future__ import annotations

from typing import Mapping

from search.config import Config
from spaces.spec import MixtureSpec, make_mixture_spec


def baseline_specs(cfg: Config) -> dict[str, MixtureSpec]:
    """Each single adapter and the uniform soup of all, evaluated on the search's targets."""
    targets = cfg.search.targets
    specs = {f"single {d}": make_mixture_spec(members=[d], targets=targets, require_targets=False)
             for d in sorted(cfg.domains)}
    specs["soup of all"] = make_mixture_spec(members=sorted(cfg.domains), targets=targets, require_targets=False)
    return specs


def evaluate_specs(cfg: Config, specs: Mapping[str, MixtureSpec],
                   weights: Mapping[str, Mapping] | None = None) -> dict[str, dict[str, float]]:
    """Mean and per-target validation accuracy of each spec, keyed like ``specs``."""
    import os

    from trainables.store import load_sign_index
    from trainables.evaluate import classification_metrics, encoded_split, mixture_model, predict
    from trainables.mixing import build_mixture

    if weights is None:
        weights, _ = load_sign_index(cfg.store_path, cfg.domains)
    experiment = cfg.model_dump()
    model = mixture_model(experiment, os.path.abspath(cfg.store_path))
    out: dict[str, dict[str, float]] = {}
    for name, spec in specs.items():
        model.set_weights(build_mixture({m: weights[m] for m in spec.members}, spec))
        row: dict[str, float] = {}
        for target in spec.targets:
            model.use_head(target)
            enc = encoded_split(experiment, target, "validation", model.label_names[target])
            m = classification_metrics(predict(model.model, enc, cfg.search.eval_batch_size), enc.labels,
                                       model.num_labels[target])
            row[f"accuracy/{target}"] = m["accuracy"]
        row["accuracy_mean"] = sum(row[f"accuracy/{t}"] for t in spec.targets) / len(spec.targets)
        out[name] = row
    return out

