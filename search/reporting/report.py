"""The report of an experiment: the paper's figures as PNG, the CSV behind each, logged to MLflow.

=================  ====================================================================  ===========
file               what it shows                                                         paper
=================  ====================================================================  ===========
fsd_heatmap        the pairwise FSD matrix of the adapters, values annotated             Fig. 4
accuracy_vs_k      per target: accuracy of the study's subsets holding it vs k           Fig. 3
fsd_vs_accuracy    per target and pooled: FSD vs accuracy, Pearson and Spearman          Figs. 5-6
                   (``correlations.csv``: the statistics)
greedy_vs_bounds   Greedy Adapter Mixing (and its mirror) vs the best and worst subset   Fig. 7
sparsity_curves    single adapters vs sparsity; sparse mixing vs the best dense mixture  Fig. 8
search_progress    best mean accuracy so far vs mixtures evaluated, per search strategy  -
soup_drop          the uniform soup of all adapters vs each target's own adapter         Table 1
measures_vs_       each cached conflict measure vs accuracy, partial Spearman within     -
accuracy           target and size (``signmix fsd --measures``)
=================  ====================================================================  ===========

Nothing is evaluated here: every number comes from MLflow runs (the newest study's
``subsets``, ``sweep`` and ``sparse_mixing`` children, and the searches' children) and
from the FSD matrix of the adapter store. When the store cannot be read on this machine,
the matrix is rebuilt from the study's two-member subsets (a pair's mean pairwise FSD is
its FSD). A figure whose data is missing is skipped with a note.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from search.reporting.report_data import MissingData, read_report_data, row_means  # noqa: F401  (row_means: interface)
from search.reporting.report_figures import FIGURES
from spaces.fsd import greedy_members  # noqa: F401  (part of this module's interface)

if TYPE_CHECKING:
    from search.settings.config import Config

logger = logging.getLogger(__name__)

ARTIFACT_PATH = "report"


def build_report(cfg: Config, out_dir: str | os.PathLike, *,
                 progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the report's figures (PNG) and their CSVs into ``out_dir`` and log them as
    artifacts under ``report/`` of the newest study run (else the newest search run).

    Returns:
        The files written, in :data:`FIGURES` order. A figure without data is skipped
        and said so through ``progress`` and the log.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    data, client, log_to = read_report_data(cfg, notes)
    written: list[Path] = []
    for name, draw in FIGURES.items():
        try:
            written += draw(data, out)
        except MissingData as exc:
            notes.append(f"skipped {name}: {exc}")
    if written and log_to:
        _log_artifacts(client, log_to, written)
        notes.append(f"logged {len(written)} files under {ARTIFACT_PATH}/ of MLflow run {log_to}")
    elif written:
        notes.append("not logged to MLflow: the experiment has no search or study run")
    for note in notes:
        logger.info(note)
        if progress:
            progress(note)
    return written


def _log_artifacts(client, run_id: str, paths: Sequence[Path]) -> None:
    """Log exactly ``paths`` (not whatever else the folder holds) under ``report/``."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="signmix-report-") as tmp:
        for path in paths:
            shutil.copy2(path, Path(tmp) / path.name)
        client.log_artifacts(run_id, tmp, ARTIFACT_PATH)
