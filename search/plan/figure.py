"""The plan's figure: bodies vs mean test accuracy with 95% intervals, against the bound under both
head protocols (lines) and the soup and TIES of all (points)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence


def draw_plan_front(path: str | os.PathLike, rows: Sequence[Mapping], references: Mapping[str, Mapping],
                    *, chosen: int, title: str) -> Path:
    """Write the figure as PNG (atomically); returns its path.

    Args:
        rows: one per number of bodies: ``bodies``, ``validation``, ``test``, ``test_low``, ``test_high``.
        references: name -> ``{"test": ..., "kind": "line" | "point"}`` (bounds are lines, the
            soup and TIES of all are points at one body).
        chosen: the chosen plan's number of bodies (ringed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [r["bodies"] for r in rows]
    test = [100 * r["test"] for r in rows]
    err = [[100 * (r["test"] - r["test_low"]) for r in rows], [100 * (r["test_high"] - r["test"]) for r in rows]]
    ax.errorbar(xs, test, yerr=err, fmt="o-", color="C0", capsize=3, label="best plan found (test, 95% interval)")
    ax.plot(xs, [100 * r["validation"] for r in rows], "o", mfc="none", color="C0", alpha=0.6,
            label="best plan found (validation)")
    for i, (name, ref) in enumerate(references.items()):
        color = f"C{i + 1}"
        if ref["kind"] == "line":
            ax.axhline(100 * ref["test"], color=color, linestyle="--", label=f"{name} (test)")
        else:
            ax.plot([1], [100 * ref["test"]], marker="s^vD"[i % 4], linestyle="none", color=color,
                    label=f"{name} (test)")
    pick = next((r for r in rows if r["bodies"] == chosen), None)
    if pick is not None:
        ax.plot([chosen], [100 * pick["test"]], "o", ms=14, mfc="none", color="C3", label="chosen plan")
    ax.set_xlabel("merged bodies served (G)")
    ax.set_ylabel("mean accuracy over domains (%)")
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path
