"""``signmix fsd CONFIG --measures ...``: each conflict measure's matrix, and which one predicts.

Over the experiment's evaluated mixtures that serve exactly ``search.targets`` (in-domain
targets, or a serving group scored on all its members), each measure's Spearman and partial
Spearman within size with accuracy, best first, and the measure ``conflict_measure: auto``
would filter with. ``merge_gap`` is computed for those mixtures (one forward pass each on the
probe examples, cached), and its cost per mixture is printed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

from search.settings.config import Config
from search.workflows.conflict_measures import conflict_measures, merge_gaps
from search.proposals.fsd_gate import validation_tolerance
from search.proposals.measure_gate import experiment_evidence, experiment_points
from search.tracking.tables import format_table, write_csv
from spaces.measure_ranking import choose_measure, format_p
from spaces.measures import MEASURES, PAIRWISE_MEASURES

logger = logging.getLogger(__name__)


def _layer_order(name: str) -> tuple:
    return (not name.startswith("layer."), int(name.split(".")[1]) if name.startswith("layer.") else 0)


def measures_report(cfg: Config, names: Sequence[str], *, out: Path, per_layer: bool = False,
                    progress: Callable[[str], None] = logger.info, debug: bool = False) -> list[str]:
    """The lines ``signmix fsd --measures`` prints; writes ``<out stem>_<measure>.csv`` per
    measure (and ``..._per_layer.csv`` with ``per_layer``). The caller has checked ``names``."""

    measures = conflict_measures(cfg, [n for n in names if n in PAIRWISE_MEASURES], progress=progress, debug=debug)
    lines: list[str] = []
    for name, m in measures.items():
        rows = [[a] + [float(m.matrix[i, j]) for j in range(len(m.names))] for i, a in enumerate(m.names)]
        lines += ["", f"{name}: {MEASURES[name]} (computed in {m.seconds:.1f} s)", format_table(rows, [name, *m.names])]
        path = write_csv(out.with_name(f"{out.stem}_{name}.csv"), ["adapter", *m.names],
                         [[r[0], *(f"{x:.6f}" for x in r[1:])] for r in rows])
        lines.append(f"written: {path}")
        if per_layer and m.per_layer:
            layers = sorted(m.per_layer, key=_layer_order)
            pairs = [(i, j) for i in range(len(m.names)) for j in range(i + 1, len(m.names))]
            rows = [[f"{m.names[i]}-{m.names[j]}"] + [float(m.per_layer[layer][i, j]) for layer in layers]
                    for i, j in pairs]
            lines += [format_table(rows, ["pair", *layers])]
            path = write_csv(out.with_name(f"{out.stem}_{name}_per_layer.csv"), ["pair", *layers],
                             [[r[0], *(f"{x:.6f}" for x in r[1:])] for r in rows])
            lines.append(f"written: {path}")
    points = experiment_points(cfg)
    extra = {}
    if "merge_gap" in names and points:
        gaps, seconds = merge_gaps(cfg, [spec for _, _, _, spec in points], debug=debug)
        extra["merge_gap"] = gaps
        lines += ["", f"merge_gap: {MEASURES['merge_gap']}: {len(gaps)} evaluated mixtures, "
                      f"{'cached' if math.isnan(seconds) else f'{seconds:.2f} s a mixture'}"]
    tolerance, _ = validation_tolerance(cfg, progress=lambda line: None)
    table = experiment_evidence(cfg, measures, tolerance, extra)
    lines.append("")
    if not table:
        lines.append("Conflict measures against accuracy: no evaluated mixture of these targets yet; "
                     "run `signmix search CONFIG`")
        return lines
    lines.append(f"Conflict measures against accuracy ({table[0].n} evaluated mixtures of "
                 f"{'+'.join(cfg.search.targets)}, best first):")
    rows = [[e.measure, _num(e.spearman), format_p(e.spearman_p), _num(e.partial),
             "-" if math.isnan(e.low) else f"[{e.low:+.2f}, {e.high:+.2f}]", format_p(e.partial_p), e.n,
             e.gate.decision] for e in table]
    lines.append(format_table(rows, ["measure", "Spearman", "p", "partial (within size)", "95%", "p", "n", "gate"]))
    chosen, reason = choose_measure([e for e in table if e.measure in PAIRWISE_MEASURES])
    lines.append(f"Conflict gate (conflict_measure: auto) would choose: {chosen.measure if chosen else 'none'}: {reason}")
    return lines


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.3f}"
