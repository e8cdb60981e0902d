"""A group's merged body, searched as Ray Tune trials recorded in MLflow; and the fixed candidates
a plan evaluates example by example (own adapters under both head protocols, cross heads,
the soup and TIES of all, the plan's bodies on test).

A group's body is a search like ``signmix search`` (the same trainable, searcher, strategy
and tracking), over the group's domains only, with every one of them a target and a member
(``require_targets``): what is searched is the operator, its parameters, the weights and the
pruning of ``search``, for ``plan.mixtures_per_group`` evaluations. Its MLflow parent run is
tagged with the plan's run, the group and a hash of its settings, so a later plan of the
same experiment reuses it instead of searching the group again. The groups of a batch
(``plan.parallel_groups``) are searched at once, each in a Ray task of its own
(``search/plan/concurrent_searches.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from search.settings.config import Config, PlanConfig, updated
from search.workflows.baselines import TIES_OF_ALL, ties_of_all
from search.workflows.confirmation_passes import run_confirmation_trials
from search.plan.partition import Group
from search.plan.transfer import OperatorRecord, choice_key, describe_choice
from search.plan.concurrent_searches import SearchJob, run_searches
from search.workflows.export import find_best_run
from search.tracking.layout import (
    KIND_TAG,
    PARENT_TAG,
    PLAN_BODY_KEY_TAG,
    PLAN_GROUP_TAG,
    PLAN_RUN_TAG,
    STATUS_TAG,
    spec_from_run,
)
from spaces.errors import SignmixError
from spaces.space import space_from_config
from spaces.spec import MixtureSpec, make_mixture_spec

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class GroupBody:
    """The best body found for a group: its MLflow run, mixture and each member's validation accuracy."""

    group: Group
    run_id: str
    search_run_id: str
    spec: MixtureSpec
    accuracy: dict[str, float]


def group_config(cfg: Config, group: Sequence[str], *, warm_start: bool = True) -> Config:
    """``cfg`` for the search of one group's body: the group's domains only, each a target and a
    member; ``plan.mixtures_per_group`` evaluations; no test confirmation (the plan confirms).
    ``warm_start=False``: no greedy warm start (the operator choices of earlier groups come first)."""
    search = updated(cfg.search, targets=list(group), require_targets=True, max_members=None,
                     num_mixtures=cfg.plan.mixtures_per_group, confirm=False, max_fsd=None,
                     **({} if warm_start else {"warm_start": "none"}))
    return updated(cfg, domains={d: cfg.domains[d] for d in group}, search=search,
                   study=updated(cfg.study, targets=None), plan=PlanConfig())


def group_name(group: Sequence[str]) -> str:
    return "+".join(group)


def body_key(group_cfg: Config) -> str:
    """A hash of everything a group's body search depends on: its search settings (operators,
    budget, seed, ...), the base model, the adapters' and training settings and the domains' data.

    Settings at their defaults are left out, so that a setting a later signmix adds (off or at
    its default) keeps the bodies searched before it; a setting given a value counts. The price:
    a default that changes between versions does not change the key."""
    def settings(model) -> dict:
        return model.model_dump(exclude_defaults=True)

    blob = json.dumps({"search": settings(group_cfg.search), "base_model": group_cfg.base_model,
                       "adapter": settings(group_cfg.adapter), "training": settings(group_cfg.training),
                       "domains": {d: settings(c) for d, c in sorted(group_cfg.domains.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class BodySearch:
    """Searches each group's body once and tags its MLflow runs; a group whose body an earlier
    plan of the experiment searched with the same settings (:func:`body_key`) is read back
    from MLflow instead of searched again (the planner caches within a plan)."""

    def __init__(self, cfg: Config, *, plan_run_id: str, client, experiment_id: str,
                 progress: Callable[[str], None] = logger.info, debug: bool = False,
                 trial: Callable | None = None) -> None:
        self.cfg, self.plan_run_id, self.client, self.progress, self.debug = cfg, plan_run_id, client, progress, debug
        self.trial = trial  # replaces the mixture trial (a benchmark's cheap evaluator)
        self.searched = 0  # group searches started
        self.experiment_id = experiment_id
        self.bodies: dict[Group, GroupBody] = {}
        self.reused: set[Group] = set()
        self.evaluated: dict[Group, int] = {}  # mixtures each group's search evaluated (none when reused)
        self.merge = space_from_config(cfg.search, cfg.plan_domains, targets=cfg.plan_domains).merge
        self.operators = OperatorRecord(self.merge.operator_choices()) if cfg.plan.transfer else None

    def _searched_before(self, key: str):
        """The finished body search of this key, newest first; None when there is none."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PLAN_BODY_KEY_TAG}` = '{key}' and "
                                       "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    def __call__(self, group: Group) -> dict[str, float]:
        """Each member's validation accuracy with the best body found for ``group``."""
        (accuracy,) = self.score_groups([group])
        return accuracy

    def score_groups(self, groups: Sequence[Group]) -> list[dict[str, float]]:
        """:meth:`__call__` for several groups; their searches run at once when there are two or
        more, one in this process otherwise (:func:`search.plan.concurrent_searches.run_searches`).
        The operator choices each search tries first are those learnt before the batch."""
        first = self.operators.first(self.cfg.plan.mixtures_per_group) if self.operators else []
        firsts = "; first " + ", ".join(describe_choice(c) for c in first) if first else ""
        jobs, keys = [], {}
        for group in groups:
            name = group_name(group)
            group_cfg = group_config(self.cfg, group, warm_start=not first)
            key = body_key(group_cfg)
            earlier = self._searched_before(key)
            if earlier is not None:
                self.progress(f"plan: the body of {name} was searched before with these settings (MLflow run "
                              f"{earlier.info.run_id}): reused")
                self.reused.add(group)
                self._learn(group, earlier.info.run_id)
                self._record(group, find_best_run(self.client, self.experiment_id, earlier.info.run_id),
                             earlier.info.run_id)
                continue
            keys[group] = key
            self.searched += 1
            self.progress(f"plan: searching one body for {name} ({self.cfg.plan.mixtures_per_group} evaluations"
                          f"{firsts})")
            # nested under the plan run in MLflow, named for its domains; the plan's count names its
            # Ray experiment and Optuna study apart from those of the searches that start beside it
            jobs.append((group, SearchJob(name=name, cfg=group_cfg, options=dict(
                first_merges=first, run_name=f"plan-group {name}", name_suffix=f"g{self.searched}",
                tags={PARENT_TAG: self.plan_run_id, PLAN_RUN_TAG: self.plan_run_id,
                      PLAN_GROUP_TAG: ",".join(group)}))))
        summaries = run_searches([job for _, job in jobs], progress=self.progress, debug=self.debug, trial=self.trial)
        for (group, job), summary in zip(jobs, summaries):
            if summary.best_run_id is None:
                raise SignmixError(f"no mixture of {job.name} could be evaluated ({summary.failed} failed); "
                                   "run `signmix --debug plan CONFIG` for the workers' errors")
            self.evaluated[group] = summary.evaluated
            # tagged last: only a search that found a body is ever reused
            self.client.set_tag(summary.parent_run_id, PLAN_BODY_KEY_TAG, keys[group])
            self._learn(group, summary.parent_run_id)
            self._record(group, self.client.get_run(summary.best_run_id), summary.parent_run_id)
        return [dict(self.bodies[g].accuracy) for g in groups]

    def _learn(self, group: Group, search_run_id: str) -> None:
        """Tell the operator record what each mixture of a group's search scored (``plan.transfer``),
        under the config's name of its operator choice (a mixture is recorded canonical: task
        arithmetic with λ 1 as the average, ``spaces/canonical.py``)."""
        if self.operators is None:
            return
        named = {}
        for choice in self.operators.choices:
            args = self.merge.spec_arguments(self.merge.params_for(group, merge=choice), group)
            spec = make_mixture_spec(members=list(group), targets=list(group), **args)
            named.setdefault(choice_key(self.merge.choice_of(spec)), choice)
        where = (f"tags.`mlflow.parentRunId` = '{search_run_id}' and tags.`{STATUS_TAG}` = 'evaluated' "
                 f"and tags.`{KIND_TAG}` = 'mixture'")
        runs = self.client.search_runs([self.experiment_id], filter_string=where, max_results=1000)
        results = [(self.merge.choice_of(spec_from_run(r)), r.data.metrics["accuracy_mean"]) for r in runs
                   if "accuracy_mean" in r.data.metrics]
        self.operators.add([(named.get(choice_key(c), c), acc) for c, acc in results])

    def _record(self, group: Group, run, search_run_id: str) -> dict[str, float]:
        accuracy = {d: float(run.data.metrics[f"accuracy/{d}"]) for d in group}
        self.bodies[group] = GroupBody(group=group, run_id=run.info.run_id, search_run_id=search_run_id,
                                       spec=spec_from_run(run), accuracy=accuracy)
        return accuracy


def own_spec(domain: str, head: str) -> MixtureSpec:
    """``domain``'s own adapter, scored on ``domain`` with ``head`` (own: its trained head; refit)."""
    return make_mixture_spec(members=[domain], targets=[domain], require_targets=False, head=head)


def baseline_candidates(cfg: Config, domains: Sequence[str], *, cross_heads: bool,
                        ties: bool) -> dict[str, tuple[MixtureSpec, list[str]]]:
    """What a plan compares against, for one Ray trial of per-example correctness:

    - ``own/<d>`` and ``refit/<d>``: each own adapter with its trained head and with a head
      refit on it, on validation and test (the bound under both head protocols);
    - ``cross/<a>``: a's adapter with each other domain b's head on b's validation split
      (``cross_heads``), one trial;
    - ``soup``: the uniform average of all, ``ties``: TIES of all (first density and lambda),
      every domain with its head under ``search.head``, on validation and test.
    """
    both = ["validation", "test"]
    out: dict[str, tuple[MixtureSpec, list[str]]] = {}
    for d in domains:
        out[f"own/{d}"] = (own_spec(d, "own"), both)
        out[f"refit/{d}"] = (own_spec(d, "refit"), both)
    if cross_heads:  # one trial per adapter: a's adapter under every other domain's head, on its data
        for a in domains:
            out[f"cross/{a}"] = (make_mixture_spec(members=[a], targets=[b for b in domains if b != a],
                                                   require_targets=False), ["validation"])
    head = cfg.search.head
    out["soup"] = (make_mixture_spec(members=list(domains), targets=list(domains), require_targets=False, head=head),
                   both)
    if ties:
        out[TIES_OF_ALL] = (ties_of_all(cfg, domains, domains, head=head), both)
    return out


def correctness(cfg: Config, candidates: Mapping[str, tuple[MixtureSpec, list[str]]], weights, *,
                name: str, progress: Callable[[str], None] = logger.info,
                count_rows: Callable[[int], None] | None = None) -> dict:
    """name -> split -> domain -> [0/1, ...] of ``candidates``, one parallel Ray Tune trial per
    distinct mixture (:func:`search.workflows.confirmation_passes.run_confirmation_trials`, which
    tells ``count_rows`` how many rows it scored: what the store kept is read, not scored)."""
    if any(spec.merge_method != "average" for spec, _ in candidates.values()) and "ties" not in cfg.search.merge_methods:
        # the trial rebuilds the shared initialisation only when the config's operators need it
        cfg = updated(cfg, search=updated(cfg.search, merge_methods=[*cfg.search.merge_methods, "ties"]))
    return run_confirmation_trials(cfg, candidates, weights, name=name, progress=progress, count_rows=count_rows)


def accuracy(correct: Sequence[int]) -> float:
    return sum(correct) / len(correct) if correct else float("nan")
