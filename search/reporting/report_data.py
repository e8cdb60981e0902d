"""What a report is drawn from: the experiment's runs in MLflow and the FSD matrix.

Nothing is evaluated here: every number comes from MLflow runs (the newest study's
``subsets``, ``sweep`` and ``sparse_mixing`` children, and the searches' children) and from
the FSD matrix of the adapter store. When the store cannot be read on this machine, the
matrix is rebuilt from the study's two-member subsets (a pair's mean pairwise FSD is its FSD).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from search.workflows.conflict_measures import cached_measures
from search.tracking.experiment_runs import MixtureRun, mixture_runs, open_existing_experiment, search_parents
from search.tracking.layout import STRATEGY_TAG, STUDY_PART_TAG
from spaces.errors import StoreError
from trainables.store import load_sign_index

if TYPE_CHECKING:
    from search.settings.config import Config

logger = logging.getLogger(__name__)


class MissingData(Exception):
    """The data a figure needs is not in the experiment (yet); the figure is skipped."""


@dataclass
class ReportData:
    """What the figures are drawn from, read once."""

    domains: list[str]
    subsets: dict[frozenset, MixtureRun] = field(default_factory=dict)  # the study's, by member set
    sweep: list[MixtureRun] = field(default_factory=list)
    sparse: list[MixtureRun] = field(default_factory=list)
    searches: dict[str, list[MixtureRun]] = field(default_factory=dict)  # strategy -> evaluated children
    fsd: tuple[list[str], list[list[float]], str] | None = None  # names, matrix, where it came from
    measures: dict = field(default_factory=dict)  # the store's cached conflict measures (search/workflows/conflict_measures.py)


# -- pure helpers (tested directly) -----------------------------------------------------------

def row_means(names: Sequence[str], matrix: Sequence[Sequence[float]], keep: Sequence[str]) -> dict[str, float]:
    """Each adapter's mean FSD to the other adapters of ``keep`` (as ``SignIndex.row_means``)."""
    pos = {n: i for i, n in enumerate(names)}
    if len(keep) < 2:
        return {d: 0.0 for d in keep}
    return {d: sum(matrix[pos[d]][pos[o]] for o in keep if o != d) / (len(keep) - 1) for d in keep}


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson r and Spearman rho with their two-sided p-values (scipy.stats) and n.

    NaN where undefined: fewer than three points, or a constant variable."""
    from scipy import stats

    n = len(x)
    out = {"n": n, "pearson_r": math.nan, "pearson_p": math.nan, "spearman_rho": math.nan, "spearman_p": math.nan}
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    out.update(pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
               spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue))
    return out


# -- reading the experiment ---------------------------------------------------------------------

def read_report_data(cfg: Config, notes: list[str]) -> tuple[ReportData, object, str | None]:
    """The report's data, the MLflow client and the run the report is logged to (or None)."""
    client, experiment_id = open_existing_experiment(cfg)
    data = ReportData(domains=sorted(cfg.domains))
    log_to = None
    if experiment_id is None:
        notes.append(f"no MLflow experiment {cfg.experiment_name!r} at {cfg.tracking_uri} yet")
    else:
        parents = search_parents(client, experiment_id)  # newest first
        studies = [p for p in parents if p.data.tags.get(STRATEGY_TAG) == "study"]
        if studies or parents:
            log_to = (studies or parents)[0].info.run_id
        if studies:
            children = mixture_runs(client, experiment_id, status="evaluated", parent_id=studies[0].info.run_id)
            for run in sorted(children, key=lambda r: r.start_time):
                part = run.tags.get(STUDY_PART_TAG)
                if part == "subsets":
                    data.subsets.setdefault(frozenset(run.members), run)
                elif part == "sweep":
                    data.sweep.append(run)
                elif part == "sparse_mixing":
                    data.sparse.append(run)
            if data.subsets:
                data.domains = sorted(set().union(*data.subsets))
        for parent in parents:
            strategy = parent.data.tags.get(STRATEGY_TAG, "?")
            if strategy != "study" and strategy not in data.searches:  # the newest search per strategy
                runs = mixture_runs(client, experiment_id, status="evaluated", parent_id=parent.info.run_id)
                data.searches[strategy] = sorted((r for r in runs if "accuracy_mean" in r.metrics),
                                                 key=lambda r: (r.end_time is None, r.end_time or 0, r.start_time))
    data.fsd = _fsd_matrix(cfg, data, notes)
    data.measures = cached_measures(cfg)
    return data, client, log_to


def _fsd_matrix(cfg: Config, data: ReportData, notes: list[str]):

    try:
        _, index = load_sign_index(cfg.store_path, cfg.member_domains)
        return list(index.names), index.matrix.tolist(), "stored adapters"
    except StoreError as exc:
        reason = str(exc)
    names = data.domains
    pairs = {s: r for s, r in data.subsets.items() if len(s) == 2}
    if not pairs:
        notes.append(f"FSD matrix unavailable: {reason}; and no study has evaluated pairs")
        return None
    matrix = [[0.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], i + 1):
            run = pairs.get(frozenset((a, b)))
            value = None if run is None else run.metrics.get("fsd_mean_pairwise", run.metrics.get("fsd"))
            if value is None:
                notes.append(f"FSD matrix unavailable: {reason}; and the study has no FSD of the pair {a}, {b}")
                return None
            matrix[i][j] = matrix[j][i] = value
    notes.append(f"FSD matrix rebuilt from the study's pairs ({reason})")
    return names, matrix, "the study's two-adapter subsets"
