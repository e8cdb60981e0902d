"""Results you can trust: the chosen mixture confirmed once on the test split, and ties said aloud.

At the end of a search (and in ``signmix export`` when the search did not confirm):

- the tie rule (``search.when_tied``) compares the best mixture on **validation** with its
  runner-up, the targets-alone mixture when the search evaluated it (never in serving,
  where every mixture holds exactly the targets) and the one-body baselines (the soup, TIES of
  all, and for one data-only target the best single library adapter), reading the per-example validation correctness each search trial kept
  (:mod:`search.workflows.confirmation_passes`); a baseline that beats the searched mixtures is
  what the search exports (logged as a mixture run of the search);
- then, in parallel Ray Tune trials (:func:`trainables.confirmation_trial.confirm_candidates`,
  one per mixture), on each target's **test** split: the chosen mixture, the targets alone,
  each target's own adapter (and its validation split), the uniform soup of all adapters and
  greedy FSD's pick of the same size; and on validation the baselines of the search summary
  (soup and TIES of all) that no search run kept.

Selection reads validation only: the test numbers are reported for the chosen mixture and the
baselines, never used to choose. The statistics are :mod:`trainables.significance`'s (paired
bootstrap, exact McNemar).

MLflow: one child run under the search, tagged ``signmix.kind = confirmation`` (names in
:func:`confirmation_metrics`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

from search.runtime.cluster import connect_ray
from search.workflows.baselines import TIES_OF_ALL, log_baseline_run, ties_of_all
from search.workflows.confirmation_decision import (
    ONE_BODY_BASELINES,
    blackbox_measure,
    confirmation_metrics,
    decide_and_measure,
    record_from_run,
    tie_rule_choice,
    validation_baselines,
)
from search.workflows.confirmation_passes import run_confirmation_trials, stored_validation
from search.workflows.new_domain import (
    BEST_SINGLE,
    SINGLE_PREFIX,
    best_singles,
    compare_baselines,
    comparison_lines,
    comparison_metrics,
    confirmation_weights,
    new_domain_candidates,
    new_domain_targets,
)
from search.proposals.fsd_gate import log_gate
from search.proposals.strategies import greedy_path
from search.tracking.experiment_runs import evaluated_mixture_run, open_existing_experiment
from search.tracking.layout import (
    BEST_TAG,
    CHOSEN_TAG,
    KIND_TAG,
    NOTE_TAG,
    NOTES_TAG,
    PARENT_TAG,
    RULE_TAG,
    STATUS_TAG,
    logged_value,
    run_link,
    spec_from_run,
)
from spaces.operators import MERGE_OPERATORS
from spaces.space import space_from_config
from spaces.spec import make_mixture_spec

if TYPE_CHECKING:
    from search.settings.config import Config

logger = logging.getLogger(__name__)

KIND = "confirmation"


def ranked_runs(client, experiment_id: str, parent_id: str | None, *, page: int = 500) -> Iterator:
    """The evaluated mixture runs (of one search, or of the experiment), best validation
    accuracy first, read a page at a time (a search may have tens of thousands)."""

    where = f"tags.`{STATUS_TAG}` = 'evaluated' and tags.`{KIND_TAG}` = 'mixture'"
    if parent_id:
        where += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    token = None
    while True:
        runs = client.search_runs([experiment_id], filter_string=where, max_results=page, page_token=token,
                                  order_by=["metrics.accuracy_mean DESC", "metrics.k ASC",
                                            "attributes.start_time ASC"])
        yield from runs
        token = runs.token
        if not token:
            return


def exportable_runs(best, ranked: Iterable, *, serving: bool = False) -> dict:
    """``best``, ``runner_up`` (the next in ``ranked``) and ``alone`` (the first after them whose
    members are the targets, unpruned), among runs of the same targets as ``best`` (a study's
    runs may serve others). ``ranked`` (best first) is read only as far as these are found.
    ``serving``: every mixture holds exactly the targets, so "the targets alone" names no
    mixture of its own (any unpruned one would match): there is no ``alone``."""
    runs = {"best": best}
    targets = sorted(spec_from_run(best).targets)
    for r in ranked:
        if r.data.params.get("targets") != best.data.params.get("targets") or r.info.run_id == best.info.run_id:
            continue
        if "runner_up" not in runs:
            runs["runner_up"] = r
            if serving:
                break
            continue
        spec = spec_from_run(r)
        if sorted(spec.members) == targets and spec.prune_ratio == 0.0:
            runs["alone"] = r
            break
    return runs


def is_serving(cfg: Config, targets) -> bool:
    """Whether every mixture of the search holds exactly ``targets``: they must be members and
    every domain is one of them (serving: one body for all, each domain's head)."""
    return cfg.search.require_targets and set(targets) == set(cfg.domains)


def candidates_for(cfg: Config, best, ranked: Iterable, index) -> tuple[dict, dict]:
    """The confirmation's candidates: name -> (spec, splits), and name -> run for the exportable ones.

    Exportable (searched, with an MLflow run): ``best``, ``runner_up`` (the next best
    validation accuracy) and ``alone`` (the targets without other members, when evaluated;
    never in serving, :func:`is_serving`). Baselines: ``own/<target>``, ``soup`` and
    ``greedy/<k>`` for the sizes of the exportable ones, and ``ties_of_all`` (TIES of every domain
    at the first configured density and λ, when the operators' shared initialisation is at hand),
    whose validation splits are the search summary's baselines.
    """
    targets = list(spec_from_run(best).targets)
    runs = exportable_runs(best, ranked, serving=is_serving(cfg, targets))
    both = ["test", "validation"]
    cands: dict[str, tuple] = {name: (spec_from_run(r), both) for name, r in runs.items()}
    for t in targets:
        cands[f"own/{t}"] = (make_mixture_spec(members=[t], targets=[t], require_targets=False), both)
    every = cfg.member_domains
    # A data-only target has no trained head but that of the adapter trained on its few examples:
    # the soup is scored with a refit head (the new domain's "soup of all" baseline).
    new = new_domain_targets(cfg, targets)
    cands["soup"] = (make_mixture_spec(members=every, targets=targets, require_targets=False,
                                       **({"head": "refit"} if new else {})), both)
    if any(MERGE_OPERATORS[m].needs_init for m in cfg.search.merge_methods):
        cands[TIES_OF_ALL] = (ties_of_all(cfg, every, targets), ["validation"])
    space = space_from_config(cfg.search, every, targets=targets, max_members=None)
    path = [space.to_mixture_spec(p) for p in greedy_path(space, index)]
    for k in sorted({spec.k for spec, _ in (cands[n] for n in runs)}):
        pick = next((s for s in path if s.k == k), None)
        if pick is not None:
            cands[f"greedy/{k}"] = (pick, ["test"])
    return cands, runs


def confirm_search(cfg: Config, *, client, experiment_id: str, parent_id: str | None, weights=None, index=None,
                   best=None, rule: str | None = None, baselines_compete: bool = True,
                   progress=logger.info) -> dict:
    """Confirm a search (or the experiment, ``parent_id=None``): the evaluations, the statistics,
    the MLflow run. Returns the confirmation record (what ``mixture.json`` stores).

    The tie rule reads validation only, and the searched mixtures' validation correctness was
    kept when they were evaluated: it decides first, mostly without evaluating anything. Then
    one parallel round evaluates what is left: the chosen mixture (and the targets alone) on
    test, each target's own adapter on both splits, the soup and greedy's pick on test, and
    the baselines' validation splits that no search run kept.

    The one-body baselines (the soup, TIES of all) compete with the searched mixtures on
    validation (``baselines_compete``; not for a run the user named): one that wins is confirmed on
    test like them and logged as a mixture run of the search, so that ``signmix export`` writes it."""
    if best is None:
        best = next(ranked_runs(client, experiment_id, parent_id, page=1))
    new = new_domain_targets(cfg, spec_from_run(best).targets)
    if weights is None or index is None or new:
        weights, index = confirmation_weights(cfg, spec_from_run(best).targets)
    rule = rule or cfg.search.when_tied
    candidates, runs = candidates_for(cfg, best, ranked_runs(client, experiment_id, parent_id), index)
    if new:
        candidates.update(new_domain_candidates(cfg, new, progress=progress))
    name = f"{cfg.name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}"
    competing = tuple(b for b in ONE_BODY_BASELINES if b in candidates) if baselines_compete else ()
    validation = stored_validation(client, experiment_id, candidates, runs)
    # The single adapters of a data-only target: their validation (mostly read from the search's runs,
    # which score the nearest alone first) picks the best single before the tie rule reads it.
    singles_named = [n for n in candidates if n.startswith(SINGLE_PREFIX)]
    unknown = {n: (candidates[n][0], ["validation"]) for n in (*runs, *competing, *singles_named)
               if n not in validation}
    if unknown:  # searched before their correctness was kept, and the baselines (often kept in the store)
        progress(f"confirmation: {len(unknown)} candidate(s) evaluated on validation for the tie rule")
        validation.update({n: c["validation"] for n, c in run_confirmation_trials(
            cfg, unknown, weights, name=f"{name}-validation", progress=progress).items()})
    singles = best_singles({n: {"validation": validation[n]} for n in singles_named}, new) if new else {}
    for n in singles.values():  # the best single adapter's test split: the new domain's comparison reads it
        candidates[n] = (candidates[n][0], ["validation", "test"])
    if baselines_compete and len(new) == 1 and new == list(spec_from_run(best).targets) and new[0] in singles:
        # One data-only target: the best single adapter competes for the export like the soup and TIES of all.
        candidates[BEST_SINGLE] = (candidates[singles[new[0]]][0], ["validation"])
        validation[BEST_SINGLE] = validation[singles[new[0]]]
        competing = (*competing, BEST_SINGLE)
    specs = {n: spec for n, (spec, _) in candidates.items()}
    chosen = tie_rule_choice(validation, specs, runs, rule=rule, seed=cfg.search.seed, baselines=competing)
    if chosen in competing:  # confirmed on test like a searched mixture
        candidates[chosen] = (specs[chosen], list(dict.fromkeys([*candidates[chosen][1], "test"])))
    todo = {}
    for cname, (spec, splits) in candidates.items():
        if cname in runs and cname not in (chosen, "alone"):
            continue  # the rule has read its validation; its test split would choose nothing
        if cname.startswith("greedy/") and cname != f"greedy/{specs[chosen].k}":
            continue
        needed = [s for s in splits if not (s == "validation" and cname in validation)]
        if needed:
            todo[cname] = (spec, needed)
    progress(f"confirming on the test split: {len({s.key for s, _ in todo.values()})} mixtures to score, in parallel "
             f"({len(validation)} validation splits read from the search's runs)")
    evaluated = run_confirmation_trials(cfg, todo, weights, name=name, progress=progress)
    correct = {cname: {**({"validation": validation[cname]} if cname in validation else {}), **evaluated.get(cname, {})}
               for cname in candidates}
    search_run_id = parent_id or best.data.tags.get("mlflow.parentRunId")
    if chosen in competing:
        progress(f"confirmation: {specs[chosen].label()} ({chosen}) beats the searched mixtures on validation; "
                 "logged as a mixture run of the search to be exported")
        # The best single adapter is mostly a mixture the search scored itself (singles first): its run is
        # exported, not logged twice ("a mixture evaluated twice has one run").
        kept = (evaluated_mixture_run(client, experiment_id, specs[chosen].key, parent_id=search_run_id)
                if chosen == BEST_SINGLE and search_run_id else None)
        runs = {**runs, chosen: kept or log_baseline_run(cfg, name=chosen, spec=specs[chosen], weights=weights,
                                                         index=index, validation=correct[chosen]["validation"],
                                                         search_run_id=search_run_id)}
    record = decide_and_measure(correct, specs, runs, rule=rule, seed=cfg.search.seed, baselines=competing)
    if cfg.search.blackbox_attack is not None:
        record["blackbox"] = blackbox_measure(correct, chosen, list(record["targets"]), seed=cfg.search.seed)
    if new:
        record["new_domain"] = compare_baselines(correct, specs, record_chosen_name(record, runs), new, singles,
                                                 seed=cfg.search.seed)
        record["notes"].extend(comparison_lines(record["new_domain"]))
    record["validation_baselines"] = validation_baselines(correct, list(specs["best"].targets))
    record["mlflow_run_id"] = log_confirmation(client, experiment_id, search_run_id, record)
    return record


def record_chosen_name(record: Mapping, runs: Mapping) -> str:
    """The candidate name (``best``, ``runner_up``, ``alone``, or a baseline) of the record's chosen run
    (a chosen baseline by its name: the best single adapter's run may also be the runner-up's)."""
    if record.get("chosen_baseline"):
        return record["chosen_baseline"]
    return next(n for n, r in runs.items() if r.info.run_id == record["chosen_run_id"])


def confirmation_description(record: Mapping, experiment_id: str) -> str:
    """The confirmation run's description (markdown on its page): the chosen and best mixture runs as
    links, the rule among ties, and the notes in full (the tag ``signmix.confirmation_notes`` keeps them
    for tools, cut by the UI's tag chips)."""
    lines = [f"Test-split confirmation of {run_link(experiment_id, record['chosen_run_id'], 'the chosen mixture')}"
             + ("" if record["best_run_id"] == record["chosen_run_id"] else
                f" (the best on validation: {run_link(experiment_id, record['best_run_id'], 'this run')}; "
                f"among ties: {record['when_tied']})") + "."]
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines)


def log_confirmation(client, experiment_id: str, parent_id: str | None, record: Mapping) -> str:
    """Log ``record`` as the ``confirmation`` child run of ``parent_id``; returns its run id."""
    from mlflow.entities import Metric, Param


    tags = {KIND_TAG: KIND, CHOSEN_TAG: record["chosen_run_id"], BEST_TAG: record["best_run_id"],
            RULE_TAG: record["when_tied"], NOTES_TAG: " | ".join(record["notes"])[:5000],
            NOTE_TAG: confirmation_description(record, experiment_id)}
    if parent_id:
        tags[PARENT_TAG] = parent_id
    run = client.create_run(experiment_id, run_name="confirmation", tags=tags)
    ts = int(time.time() * 1000)
    params = [Param("chosen_members", ",".join(record["chosen_members"])),
              Param("confidence", str(record["confidence"])), Param("split", "test")]
    params += [Param(f"{name}_members", ",".join(c["members"])) for name, c in record["baselines"].items()
               if name in ("soup", "greedy")]
    if record.get("chosen_baseline"):
        params.append(Param("chosen_baseline", record["chosen_baseline"]))
    metrics = {**confirmation_metrics(record), **comparison_metrics(record.get("new_domain", {}))}
    client.log_batch(run.info.run_id, params=params,
                     metrics=[Metric(k, logged_value(k, v), ts, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def find_confirmation(client, experiment_id: str, *, run_id: str) -> object | None:
    """The newest confirmation run that chose or started from mixture run ``run_id``; None if none."""

    for tag in (CHOSEN_TAG, BEST_TAG):
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{KIND}' and "
                                  f"tags.`{tag}` = '{run_id}'", order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0]
    return None


def finish_search(cfg: Config, searcher, tracker, summary, *, progress=logger.info) -> None:
    """The end of a search: the FSD gate's evidence and the test-split confirmation, into
    ``summary`` and MLflow; ``progress`` says when the confirmation starts."""

    summary.validation_warnings = list(getattr(searcher, "validation_warnings", []))
    gate = getattr(searcher, "gate", None)
    if gate is not None:
        gate.refresh()
        log_gate(tracker, gate)
        summary.fsd_gate, summary.fsd_gate_decision, summary.fsd_gate_label = gate.summary(), gate.decision, gate.label
        summary.max_fsd = gate.threshold
    summary.chosen_run_id = summary.best_run_id
    if not cfg.search.confirm or summary.best_run_id is None:
        return
    best = tracker.client.get_run(summary.best_run_id)
    record = confirm_search(cfg, client=tracker.client, experiment_id=tracker.experiment_id,
                            parent_id=tracker.parent_id, best=best, progress=progress)
    summary.confirmation, summary.chosen_run_id = record, record["chosen_run_id"]


def confirmed_choice(cfg: Config, client, experiment_id: str, run, *, explicit: bool) -> tuple[object, dict | None]:
    """What ``signmix export`` writes: the run to export and its confirmation record.

    For the best mixture (``explicit=False``): the tie rule's choice of the confirmation that
    started from it, confirmed now (one Ray trial) when no confirmation exists. For a run the
    user named: that run, with a confirmation that chose it (one is run with the rule
    ``higher_accuracy``, which keeps it, when none exists). None when ``search.confirm`` is off
    and nothing was confirmed.
    """

    found = find_confirmation(client, experiment_id, run_id=run.info.run_id)
    if found is not None and explicit and found.data.tags.get(CHOSEN_TAG) != run.info.run_id:
        found = None
    if found is not None:
        record = record_from_run(found)
    elif cfg.search.confirm:

        connect_ray(cfg)
        record = confirm_search(cfg, client=client, experiment_id=experiment_id, parent_id=None, best=run,
                                rule="higher_accuracy" if explicit else None, baselines_compete=not explicit)
    else:
        return run, None
    if record["chosen_run_id"] != run.info.run_id:
        run = client.get_run(record["chosen_run_id"])
    return run, record


def latest_confirmation(cfg: Config) -> dict | None:
    """The newest confirmation record of the experiment (``signmix results``); None when none. Reads only."""

    client, experiment_id = open_existing_experiment(cfg)
    if experiment_id is None:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{KIND}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return record_from_run(runs[0]) if runs else None
