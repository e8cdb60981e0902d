"""Evaluating a few fixed mixtures in this process (single adapters, the soup and TIES of all),
and what serving one mixed adapter saves against serving each domain's own.

Used for summaries and comparisons, not for searching: it reuses the trial's model,
mixing and evaluation code, so its numbers are comparable with the search's.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from search.settings.config import Config
from search.workflows.new_domain import confirmation_weights, new_domain_targets
from search.tracking.layout import BASELINE_TAG, spec_from_params
from search.tracking.tracker import SearchTracker, open_config_experiment
from spaces.operators import MERGE_OPERATORS
from spaces.spec import MixtureSpec, make_mixture_spec
from trainables.evaluate import evaluate_targets, mixture_model, mixture_targets
from trainables.example_correctness import write_correctness
from trainables.initialisation import initial_adapter_weights
from trainables.mixture_trial import INIT_KEY, load_mixture
from trainables.store import ADAPTER_FILE, HEAD_FILE, AdapterStore

# The one name of the TIES-of-all baseline, wherever it is evaluated or reported.
TIES_OF_ALL = "ties_of_all"
# The ``strategy`` parameter of a baseline's mixture run (no strategy proposed it).
BASELINE_STRATEGY = "baseline"


def baseline_specs(cfg: Config, *, every_single: bool = False) -> dict[str, MixtureSpec]:
    """Single adapters, the uniform soup of all (AdapterSoup) and TIES of all (the first
    configured density and lambda), evaluated on the search's targets with its head protocol.

    The single adapters are each target's own (on that target only: the N-adapter bound),
    or with ``every_single`` every domain's adapter on all the targets (the demo's table).
    """
    targets, head = cfg.search.targets, cfg.search.head
    if every_single:
        specs = {f"single {d}": make_mixture_spec(members=[d], targets=targets, require_targets=False, head=head)
                 for d in cfg.member_domains}
    else:
        specs = {f"single {t}": make_mixture_spec(members=[t], targets=[t], require_targets=False, head=head)
                 for t in sorted(targets)}
    specs["soup of all"] = make_mixture_spec(members=cfg.member_domains, targets=targets, require_targets=False,
                                             head=head)
    specs[TIES_OF_ALL] = ties_of_all(cfg, cfg.member_domains, targets, head=head)
    return specs


def ties_of_all(cfg: Config, members: Sequence[str], targets: Sequence[str], *, head: str = "own") -> MixtureSpec:
    """TIES of every adapter in ``members`` at the first configured density and λ, serving ``targets``:
    the one-body baseline that the search summary, the confirmation and a plan all report, under
    one name (:data:`TIES_OF_ALL`)."""
    return make_mixture_spec(members=list(members), targets=list(targets), require_targets=False, head=head,
                             merge_method="ties", density=cfg.search.densities[0], lam=cfg.search.lambdas[0])


def _mixer(cfg: Config, specs: Sequence[MixtureSpec], weights: Mapping[str, Mapping], targets: Sequence[str]):
    """The experiment, the adapters (with the shared initialisation when an operator of ``specs``
    needs it) and this process's model that build ``specs`` as a trial does."""
    import os

    experiment = cfg.experiment(targets)
    shared = dict(weights)
    if any(MERGE_OPERATORS[s.merge_method].needs_init for s in specs):
        shared[INIT_KEY] = initial_adapter_weights(experiment, cfg.store_path)
    return experiment, shared, mixture_model(experiment, os.path.abspath(cfg.store_path))


def evaluate_specs(cfg: Config, specs: Mapping[str, MixtureSpec],
                   weights: Mapping[str, Mapping] | None = None) -> dict[str, dict[str, float]]:
    """Mean and per-target validation accuracy of each spec, keyed like ``specs``; built (with the
    shared initialisation when an operator needs it) and headed (own or refit) as in a trial."""
    if weights is None:
        weights, _ = confirmation_weights(cfg, cfg.search.targets)
    experiment, shared, model = _mixer(cfg, list(specs.values()), weights, cfg.search.targets)
    out: dict[str, dict[str, float]] = {}
    for name, spec in specs.items():
        load_mixture(model, spec, shared, experiment)
        out[name] = evaluate_targets(model.model, spec.targets, mixture_targets(model, experiment),
                                     cfg.search.eval_batch_size)
    return out


def log_baseline_run(cfg: Config, *, name: str, spec: MixtureSpec, weights: Mapping[str, Mapping], index,
                     validation: Mapping[str, Sequence[int]], search_run_id: str):
    """Log the baseline ``name`` (``spec``: the soup, TIES of all) as an evaluated mixture run of the
    search ``search_run_id``, tagged ``signmix.baseline``: its mixture built as a trial builds it
    and saved as the run's artifact (what ``signmix export`` writes), its validation accuracies
    those of ``validation`` (target -> per-example 0/1: the confirmation's). Returns the run."""
    import tempfile

    accuracy = {f"accuracy/{t}": sum(validation[t]) / len(validation[t]) for t in spec.targets}
    metrics = {**accuracy, "accuracy_mean": sum(accuracy.values()) / len(accuracy), "k": spec.k}
    tracker = SearchTracker(tracking_uri=cfg.tracking_uri, experiment=cfg.experiment_name, strategy=BASELINE_STRATEGY,
                            measure=cfg.search.fsd_measure)
    tracker.parent_id = search_run_id
    experiment, shared, model = _mixer(cfg, [spec], weights, spec.targets)
    with tempfile.TemporaryDirectory(prefix="signmix-baseline-") as folder:
        load_mixture(model, spec, shared, experiment)
        model.save(folder, list(spec.targets))
        write_correctness(folder, "validation", {t: validation[t] for t in spec.targets})
        tracker.finish_mixture(spec, "evaluated", metrics=metrics, artifact_dir=folder,
                               fsd=index.subset_fsd(spec.members, cfg.search.fsd_measure))
    run_id = tracker.runs[spec.key]
    tracker.client.set_tag(run_id, BASELINE_TAG, name)
    return tracker.client.get_run(run_id)


def serving_lines(cfg: Config, best: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> list[str]:
    """What one mixed adapter gives against the alternatives, in points of mean validation accuracy.

    ``best`` holds the best mixture's ``accuracy/<target>`` metrics; ``baselines`` is
    :func:`evaluate_specs` of :func:`baseline_specs`, or the confirmation's validation splits
    (``validation_baselines`` of its record; without :data:`TIES_OF_ALL` where it had no shared
    initialisation). The N-adapter upper bound scores each
    target with its own adapter. Serving: one adapter body plus one head per target, against
    one adapter (with its head) per target, in bytes of the stored safetensors files.
    """

    targets = list(cfg.search.targets)
    mean = sum(best[f"accuracy/{t}"] for t in targets) / len(targets)
    bound = sum(baselines[f"single {t}"][f"accuracy/{t}"] for t in targets) / len(targets)
    lines = [f"best found {mean:.4f} on {len(targets)} target(s) ({cfg.search.head} heads):"]
    if new_domain_targets(cfg, targets):
        # A new domain has no adapter of its own to serve: its "own" adapter is the one trained on its
        # few examples, a baseline like the others, and there is nothing to save by merging.
        few = ", ".join(f"{t}: {cfg.domains[t].max_train_examples or cfg.training.max_train_examples or 'all'}"
                        for t in new_domain_targets(cfg, targets))
        others = [(f"the adapter fine-tuned on the few labelled examples ({few})", bound)]
        others += [(label, baselines[name]["accuracy_mean"]) for name, label in
                   (("soup of all", "the soup of all adapters"), (TIES_OF_ALL, "TIES of all")) if name in baselines]
        lines += [f"  {100 * (mean - value):+.1f} points against {name} ({value:.4f})" for name, value in others]
        lines.append("  on validation; the test-split confirmation says which baselines it beats beyond the interval "
                     "and whether it is the best single adapter")
        return lines
    others = [("each target's own adapter (N-adapter bound)", bound)]
    others += [(label, baselines[name]["accuracy_mean"]) for name, label in
               (("soup of all", "soup of all"), (TIES_OF_ALL, "TIES of all")) if name in baselines]
    for name, value in others:
        lines.append(f"  {100 * (mean - value):+.1f} points against {name} ({value:.4f})")
    store = AdapterStore(cfg.store_path)
    body = (store.path(targets[0]) / ADAPTER_FILE).stat().st_size
    heads = sum((store.path(t) / HEAD_FILE).stat().st_size for t in targets)
    separate = sum((store.path(t) / ADAPTER_FILE).stat().st_size for t in targets) + heads
    lines.append(f"served: one adapter body + {len(targets)} head(s) = {body + heads:,} bytes, against "
                 f"{len(targets)} adapter(s) with their heads = {separate:,} bytes")
    return lines


def search_summary_lines(cfg: Config, best_run_id: str,
                         baselines: Mapping[str, Mapping[str, float]] | None = None) -> list[str]:
    """:func:`serving_lines` for a search's best MLflow run (baselines evaluated when not given)."""

    client, _ = open_config_experiment(cfg)
    best = client.get_run(best_run_id).data.metrics
    if baselines is None:
        baselines = evaluate_specs(cfg, baseline_specs(cfg))
    return serving_lines(cfg, best, baselines)


def spec_of_record(record: Mapping, **changes) -> MixtureSpec:
    """The mixture an export's ``mixture.json`` describes (``changes`` replace its fields, e.g. ``head``)."""
    return spec_from_params({**record, **changes})
