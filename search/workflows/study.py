"""``signmix study``: the paper's experiments on your adapters, as Ray Tune trials.

Three parts, one list of mixtures, each evaluated once (one MLflow run per mixture key):

- ``subsets``: the in-domain study (paper Sec. 3.4). Every subset S of the domains that
  contains at least one study target (up to ``study.max_size`` members) is evaluated on
  *every* target in S with that target's own head. So the mixture S serves all its
  targets at once: N domains cost 2^N - 1 evaluations, not N * 2^(N-1).
- ``sweep``: each target's own adapter pruned by magnitude to each ``sweep_ratios``
  sparsity (Alg. 2; paper Fig. 8a).
- ``sparse_mixing``: Alg. 4 for each target and size l: the target plus the l-1 adapters
  with the smallest mean FSD, the ``sparse_layers`` layers with the highest FSD pruned to
  each of ``sparsities``, then averaged (Fig. 8b). The best dense mixture of the same size
  comes from the ``subsets`` part.

Greedy Adapter Mixing and its mirror (Alg. 1, Fig. 7) need no evaluation of their own:
their subsets are part of the study; ``signmix report`` compares them with the bounds.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from search.runtime import interrupts
from search.runtime.cluster import check_cluster_storage, connect_ray, storage_uri
from search.settings.config import Config, StudyConfig
from search.proposals.searcher import METRIC, SignConflictSearcher
from search.workflows.search_callbacks import MixtureTracking
from search.tracking.layout import SPARSE_SIZE_TAG, STUDY_PART_TAG, STUDY_TARGET_TAG
from search.tracking.tracker import SearchTracker, experiment_description, flatten
from search.runtime.trial_inputs import mixture_trainable
from spaces.fsd import FSD_MEASURES, greedy_members
from spaces.space import Verdict
from spaces.spec import MixtureSpec, make_mixture_spec
from trainables.store import load_sign_index

if TYPE_CHECKING:
    from spaces.fsd import SignIndex

logger = logging.getLogger(__name__)

PARTS = ("subsets", "sweep", "sparse_mixing")


@dataclass(frozen=True)
class StudyItem:
    """One mixture of the study, the part that asked for it, and its extra MLflow tags."""

    spec: MixtureSpec
    part: str
    tags: dict = field(default_factory=dict)


def study_items(domains: Sequence[str], study: StudyConfig, index: SignIndex,
                targets: Sequence[str] | None = None) -> list[StudyItem]:
    """Every mixture of the study, each once (the first part that asks for it keeps it).
    ``targets``: default ``study.targets``, else every domain."""
    domains = sorted(domains)
    targets = sorted(targets or study.targets or domains)
    items: dict[str, StudyItem] = {}

    def add(item: StudyItem) -> None:
        items.setdefault(item.spec.key, item)

    top = len(domains) if study.max_size is None else min(study.max_size, len(domains))
    for k in range(1, top + 1):
        for subset in itertools.combinations(domains, k):
            members_targets = [d for d in subset if d in targets]
            if members_targets:
                add(StudyItem(make_mixture_spec(members=subset, targets=members_targets), "subsets"))
    for target in targets:
        for ratio in study.sweep_ratios:
            spec = make_mixture_spec(members=[target], targets=[target], prune_ratio=ratio,
                                     prune_method="magnitude" if ratio > 0 else "none")
            add(StudyItem(spec, "sweep", {STUDY_TARGET_TAG: target}))
    for target in targets:
        for size in study.sparse_sizes:
            if size > len(domains):
                continue
            members = greedy_members(index.row_means(), target, size)
            for sparsity in study.sparsities:
                spec = make_mixture_spec(members=members, targets=[target], prune_method="conflict_layers",
                                         prune_ratio=sparsity, prune_layers=study.sparse_layers)
                add(StudyItem(spec, "sparse_mixing", {STUDY_TARGET_TAG: target, SPARSE_SIZE_TAG: str(size)}))
    return list(items.values())


class _NoStrategy:
    """The study proposes a fixed list; there is no strategy to tell."""

    name = "study"

    def tell(self, *args, **kwargs) -> None:
        pass

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def pending(self) -> dict:
        return {}


class StudySearcher(SignConflictSearcher):
    """Proposes the study's mixtures in order; nothing is filtered (the study measures FSD's
    effect, so high-FSD mixtures are exactly what it needs)."""

    def __init__(self, *, items: Sequence[StudyItem], index: SignIndex, tracker=None) -> None:
        super().__init__(strategy=_NoStrategy(), space=None, index=index, tracker=tracker, budget=len(items))
        self.items = list(items)
        self.next_item = 0
        self.by_key = {item.spec.key: item for item in self.items}

    def _space_size(self) -> int:
        return len(self.items)

    def _propose(self):
        if self.next_item >= len(self.items):
            return None
        self.next_item += 1
        return self.next_item - 1, self.items[self.next_item - 1].spec

    def _verdict(self, spec: MixtureSpec) -> Verdict:
        return Verdict(True, self.index.subset_fsd(spec.members, "mean_pairwise"))


class StudyTracking(MixtureTracking):
    """MixtureTracking plus the study's tags and both FSD measures on every child run."""

    def on_trial_start(self, iteration, trials, trial, **info):
        super().on_trial_start(iteration, trials, trial, **info)
        spec = self._spec(trial)
        if spec is None:
            return
        item = self.searcher.by_key[spec.key]
        run_id = self.tracker.runs[spec.key]
        index = self.searcher.index
        for name in FSD_MEASURES:  # every measure, so the report can compare them
            self.tracker.client.log_metric(run_id, f"fsd_{name}", index.subset_fsd(spec.members, name))
        for key, value in {STUDY_PART_TAG: item.part, **item.tags}.items():
            self.tracker.client.set_tag(run_id, key, value)


@dataclass
class StudySummary:
    mixtures: int
    by_part: dict
    evaluated: int
    failed: int
    parent_run_id: str | None
    seconds: float


def run_study(cfg: Config, *, progress=logger.info, debug: bool = False) -> StudySummary:
    """Run the study of ``cfg.study`` on the stored adapters; recorded like a search."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter


    started = time.perf_counter()
    check_cluster_storage(cfg)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    items = study_items(sorted(cfg.domains), cfg.study, index, cfg.study_targets)
    by_part = {p: sum(1 for i in items if i.part == p) for p in PARTS}
    connect_ray(cfg, debug=debug)
    tracker = SearchTracker(tracking_uri=cfg.tracking_uri, experiment=cfg.experiment_name,
                            description=experiment_description(cfg), strategy="study",
                            measure="mean_pairwise")
    run_name = f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    tracker.start(run_name=run_name, params={**flatten(cfg.study.model_dump(), "study."),
                                             "domains": ",".join(sorted(cfg.domains)), "mixtures": len(items),
                                             "base_model": cfg.base_model, "adapter.method": cfg.adapter.method})
    progress(f"study: {len(items)} mixtures ({', '.join(f'{n} {p}' for p, n in by_part.items())})")
    searcher = StudySearcher(items=items, index=index, tracker=tracker)
    # The study evaluates on its own targets, not on search.targets.
    experiment = cfg.model_copy(update={"search": cfg.search.model_copy(update={
        "targets": cfg.study_targets})})
    tuner = tune.Tuner(
        mixture_trainable(experiment, weights),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.search.max_concurrent),
                                    num_samples=-1, metric=METRIC, mode="max", reuse_actors=True),
        run_config=tune.RunConfig(name=run_name, storage_path=storage_uri(cfg), verbose=0,
                                  callbacks=[StudyTracking(tracker=tracker, searcher=searcher, progress=progress)],
                                  failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)))
    failed, stopped = True, False
    try:
        interrupts.fit(tuner)
        failed = False
    except KeyboardInterrupt:
        failed, stopped = False, True
        raise interrupts.Interrupted(f"the study stopped: {searcher.counts.evaluated} mixture(s) evaluated are kept in "
                                     f"MLflow run {tracker.parent_id} (KILLED)") from None
    finally:
        c = searcher.counts
        tracker.end(failed=failed, stopped=stopped, summary={"evaluated": c.evaluated, "failed": c.failed,
                                                             "study_seconds": time.perf_counter() - started})
    return StudySummary(mixtures=len(items), by_part=by_part, evaluated=c.evaluated, failed=c.failed,
                        parent_run_id=tracker.parent_id, seconds=time.perf_counter() - started)
