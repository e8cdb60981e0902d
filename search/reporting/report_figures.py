"""The report's figures: one function per figure, each writing a PNG and the CSV behind it."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Callable

from search.reporting.report_data import MissingData, ReportData, correlation, row_means
from search.tracking.experiment_runs import MixtureRun
from search.tracking.tables import write_csv
from search.tracking.layout import SPARSE_SIZE_TAG, STUDY_TARGET_TAG
from spaces.fsd import greedy_members
from spaces.measure_ranking import measure_evidence

# -- writing files ------------------------------------------------------------------------------

def _save_figure(fig, path: Path) -> Path:
    """Render ``fig`` with Agg into a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _panels(n: int, title: str, *, width: float = 4.8, height: float = 3.6):
    """A figure with ``n`` panels (three per row) and a title; unused panels hidden."""
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _pct(values):
    return [None if v is None else 100.0 * v for v in values]


def _subset_acc(data: ReportData, target: str, *, min_k: int = 1):
    """(subset, accuracy on target) for the study's subsets that hold ``target``."""
    return [(s, r.accuracy(target)) for s, r in data.subsets.items()
            if target in s and len(s) >= min_k and r.accuracy(target) is not None]


def _need_subsets(data: ReportData) -> None:
    if not data.subsets:
        raise MissingData("no study with evaluated 'subsets' runs in the experiment")


# -- the figures ----------------------------------------------------------------------------------

def fig_fsd_heatmap(data: ReportData, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    if data.fsd is None:
        raise MissingData("no FSD matrix (no readable adapter store, no study pairs)")
    names, m, source = data.fsd
    csv_path = write_csv(out / "fsd_heatmap.csv", ["adapter", *names], [[a, *row] for a, row in zip(names, m)])
    size = 1.0 + 0.75 * len(names)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(m, cmap="viridis", vmin=0.0)
    fig.colorbar(image, ax=ax, label="FSD (fraction of parameters with opposite signs, 0-1)")
    top = max(max(row) for row in m) or 1.0
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 * top else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("adapter (domain)")
    ax.set_ylabel("adapter (domain)")
    ax.set_title(f"Pairwise fraction of sign difference (FSD)\nfrom the {source}")
    return [_save_figure(fig, out / "fsd_heatmap.png"), csv_path]


def fig_accuracy_vs_k(data: ReportData, out: Path) -> list[Path]:
    _need_subsets(data)
    targets = [t for t in data.domains if _subset_acc(data, t)]
    fig, axes = _panels(len(targets), "Accuracy of mixtures (uniform average of k adapters) that contain the target")
    rows = []
    for ax, t in zip(axes, targets):
        by_k: dict[int, list[float]] = {}
        for s, acc in _subset_acc(data, t):
            by_k.setdefault(len(s), []).append(acc)
        ks = sorted(by_k)
        stats = [(k, len(by_k[k]), sum(by_k[k]) / len(by_k[k]), min(by_k[k]), max(by_k[k])) for k in ks]
        rows += [[t, *row] for row in stats]
        ax.scatter([k for k in ks for _ in by_k[k]], _pct([a for k in ks for a in by_k[k]]), s=12, alpha=0.5,
                   color="grey", label="one subset")
        ax.fill_between(ks, _pct([r[3] for r in stats]), _pct([r[4] for r in stats]), alpha=0.2, label="min to max over subsets")
        ax.plot(ks, _pct([r[2] for r in stats]), marker="o", label="mean")
        ax.set_xticks(ks)
        ax.set(title=f"target: {t}", xlabel="k (adapters mixed)", ylabel=f"accuracy on {t} (%)")
        ax.legend(fontsize=8)
    csv_path = write_csv(out / "accuracy_vs_k.csv", ["target", "k", "subsets", "mean_accuracy", "min_accuracy",
                                                      "max_accuracy"], rows)
    return [_save_figure(fig, out / "accuracy_vs_k.png"), csv_path]


def _fsd_of(run: MixtureRun) -> float | None:
    return run.metrics.get("fsd_mean_pairwise", run.metrics.get("fsd"))


def fig_fsd_vs_accuracy(data: ReportData, out: Path) -> list[Path]:
    _need_subsets(data)
    points = [(t, "+".join(sorted(s)), len(s), _fsd_of(data.subsets[s]), acc)
              for t in data.domains for s, acc in _subset_acc(data, t, min_k=2) if _fsd_of(data.subsets[s]) is not None]
    if not points:
        raise MissingData("no study subset of two or more adapters with an FSD and an accuracy")
    groups = [(t, [p for p in points if p[0] == t]) for t in data.domains]
    groups = [g for g in groups if g[1]] + [("pooled", points)]
    fig, axes = _panels(len(groups), "Mean pairwise FSD vs accuracy of the study's mixtures (k >= 2)")
    stats_rows = []
    for ax, (name, pts) in zip(axes, groups):
        x, y = [p[3] for p in pts], [p[4] for p in pts]
        c = correlation(x, y)
        stats_rows.append([name, c["n"], c["pearson_r"], c["pearson_p"], c["spearman_rho"], c["spearman_p"]])
        label = (f"Pearson r={c['pearson_r']:.3f} (p={c['pearson_p']:.2g})\n"
                 f"Spearman ρ={c['spearman_rho']:.3f} (p={c['spearman_p']:.2g})\nn={c['n']}")
        if name == "pooled":
            for t, tp in groups[:-1]:
                ax.scatter([p[3] for p in tp], _pct([p[4] for p in tp]), s=14, alpha=0.7, label=t)
        else:
            ax.scatter(x, _pct(y), s=14, alpha=0.7, label="one subset")
        if not math.isnan(c["pearson_r"]):
            import numpy as np

            slope, icpt = np.polyfit(x, _pct(y), 1)
            ax.plot([min(x), max(x)], [icpt + slope * min(x), icpt + slope * max(x)], color="black", lw=1, label=label)
        else:
            ax.plot([], [], " ", label=label)
        ax.set(title="pooled over all targets" if name == "pooled" else f"target: {name}",
               xlabel="mean pairwise FSD (fraction, 0-1)",
               ylabel="accuracy on the target (%)")
        ax.legend(fontsize=7)
    header = ["target", "members", "k", "fsd_mean_pairwise", "accuracy"]
    return [_save_figure(fig, out / "fsd_vs_accuracy.png"), write_csv(out / "fsd_vs_accuracy.csv", header, points),
            write_csv(out / "correlations.csv", ["target", "n", "pearson_r", "pearson_p", "spearman_rho",
                                                  "spearman_p"], stats_rows)]


def fig_greedy_vs_bounds(data: ReportData, out: Path) -> list[Path]:
    _need_subsets(data)
    if data.fsd is None:
        raise MissingData("no FSD matrix to rank the adapters by")
    names, matrix, _ = data.fsd
    if not set(data.domains) <= set(names):
        raise MissingData(f"the FSD matrix lacks {sorted(set(data.domains) - set(names))}")
    means = row_means(names, matrix, data.domains)
    targets = [t for t in data.domains if _subset_acc(data, t)]
    fig, axes = _panels(len(targets), "Greedy Adapter Mixing (smallest mean FSD) vs the best and worst subset")
    rows = []
    for ax, t in zip(axes, targets):
        found = _subset_acc(data, t)
        sizes = list(range(2, len(data.domains) + 1))
        series = {"greedy": [], "mirror": [], "best": [], "worst": []}
        for size in sizes:
            same = [(s, a) for s, a in found if len(s) == size]
            best = max(same, key=lambda p: p[1], default=(None, None))
            worst = min(same, key=lambda p: p[1], default=(None, None))
            picks = {key: greedy_members(means, t, size, largest=key == "mirror") for key in ("greedy", "mirror")}
            accs = {key: data.subsets[frozenset(m)].accuracy(t) if frozenset(m) in data.subsets else None
                    for key, m in picks.items()}
            for key, value in (("greedy", accs["greedy"]), ("mirror", accs["mirror"]), ("best", best[1]),
                               ("worst", worst[1])):
                series[key].append(value)
            rows.append([t, size, "+".join(picks["greedy"]), accs["greedy"], "+".join(picks["mirror"]), accs["mirror"],
                         "+".join(sorted(best[0] or ())), best[1], "+".join(sorted(worst[0] or ())), worst[1]])
        band = [(size, lo, hi) for size, lo, hi in zip(sizes, series["worst"], series["best"]) if lo is not None]
        ax.fill_between([b[0] for b in band], _pct([b[1] for b in band]), _pct([b[2] for b in band]),
                        color="grey", alpha=0.15, label="all subsets of size l")
        # Hollow, larger markers for the bounds: greedy often reaches one, and must stay visible.
        styles = {"best": ("upper bound: best subset", "^", "--", 10), "worst": ("lower bound: worst subset", "v", "--", 10),
                  "greedy": ("Greedy (smallest mean FSD)", "o", "-", 5), "mirror": ("mirror (largest mean FSD)", "s", ":", 5)}
        for key, (label, marker, ls, size_) in styles.items():
            pts = [(size, v) for size, v in zip(sizes, series[key]) if v is not None]
            ax.plot([p[0] for p in pts], _pct([p[1] for p in pts]), marker=marker, ls=ls, label=label,
                    markersize=size_, fillstyle="none" if size_ > 5 else "full", lw=1 if size_ > 5 else 2)
        ax.set_xticks(sizes)
        ax.set(title=f"target: {t}", xlabel="l = adapters mixed (target included)", ylabel=f"accuracy on {t} (%)")
        ax.legend(fontsize=7)
    header = ["target", "l", "greedy_members", "greedy_accuracy", "mirror_members", "mirror_accuracy",
              "best_members", "best_accuracy", "worst_members", "worst_accuracy"]
    return [_save_figure(fig, out / "greedy_vs_bounds.png"), write_csv(out / "greedy_vs_bounds.csv", header, rows)]


def fig_sparsity_curves(data: ReportData, out: Path) -> list[Path]:
    if not data.sweep and not data.sparse:
        raise MissingData("no study 'sweep' or 'sparse_mixing' runs in the experiment")
    rows = []
    for run in data.sweep:
        t = run.targets[0] if run.targets else run.members[0]
        rows.append(["single adapter", t, 1, run.prune_ratio, run.accuracy(t)])
    # The dense point (0% sparsity) of each sweep is the study's one-adapter subset: one
    # mixture, one run, recorded under the "subsets" part.
    for t in sorted({r[1] for r in rows}):
        dense = data.subsets.get(frozenset([t]))
        if dense is not None and not any(r[1] == t and r[3] == 0.0 for r in rows):
            rows.append(["single adapter", t, 1, 0.0, dense.accuracy(t)])
    sparse_targets = sorted({r.tags.get(STUDY_TARGET_TAG, "") for r in data.sparse} - {""})
    for run in data.sparse:
        t, size = run.tags.get(STUDY_TARGET_TAG, ""), int(run.tags.get(SPARSE_SIZE_TAG, run.k))
        rows.append(["sparse mixing", t, size, run.prune_ratio, run.accuracy(t)])
        best = [a for s, a in _subset_acc(data, t) if len(s) == size]
        if best and not any(r[:4] == ["best dense mixture", t, size, None] for r in rows):
            rows.append(["best dense mixture", t, size, None, max(best)])
    rows = [r for r in rows if r[4] is not None]
    fig, axes = _panels(1 + len(sparse_targets), "Accuracy vs sparsity (magnitude pruning)")
    ax = axes[0]
    for t in sorted({r[1] for r in rows if r[0] == "single adapter"}):
        pts = sorted((r[3], r[4]) for r in rows if r[0] == "single adapter" and r[1] == t)
        ax.plot(_pct([p[0] for p in pts]), _pct([p[1] for p in pts]), marker="o", label=t)
    ax.set(title="(a) each single adapter on its own domain", xlabel="sparsity (% of weights zeroed)",
           ylabel="accuracy (%)")
    ax.legend(fontsize=7, title="adapter")
    for ax, t in zip(axes[1:], sparse_targets):
        for i, size in enumerate(sorted({r[2] for r in rows if r[0] == "sparse mixing" and r[1] == t})):
            color = f"C{i}"
            pts = sorted((r[3], r[4]) for r in rows if r[0] == "sparse mixing" and r[1] == t and r[2] == size)
            ax.plot(_pct([p[0] for p in pts]), _pct([p[1] for p in pts]), marker="o", color=color,
                    label=f"sparse mixing, l={size}")
            for r in rows:
                if r[0] == "best dense mixture" and r[1] == t and r[2] == size:
                    ax.axhline(100.0 * r[4], color=color, ls="--", label=f"best dense mixture, k={size}")
        ax.set(title=f"(b) sparse mixing (Alg. 4), target: {t}", xlabel="sparsity of the mixed adapters (%)",
               ylabel=f"accuracy on {t} (%)")
        ax.legend(fontsize=7)
    header = ["series", "target", "adapters", "sparsity", "accuracy"]
    return [_save_figure(fig, out / "sparsity_curves.png"), write_csv(out / "sparsity_curves.csv", header, rows)]


def fig_search_progress(data: ReportData, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    searches = {s: runs for s, runs in data.searches.items() if runs}
    if not searches:
        raise MissingData("no search with evaluated mixtures in the experiment")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    rows = []
    for strategy, runs in sorted(searches.items()):
        best, xs, ys = -math.inf, [], []
        for i, run in enumerate(runs, 1):
            best = max(best, run.metrics["accuracy_mean"])
            xs.append(i)
            ys.append(best)
            rows.append([strategy, i, run.metrics["accuracy_mean"], best, "+".join(run.members), run.run_id])
        ax.step(xs, _pct(ys), where="post", marker="o", markersize=3, label=f"{strategy} ({len(runs)} evaluated)")
    ax.set(title="Search progress: best mean accuracy found so far (newest search per strategy)",
           xlabel="mixtures evaluated (count, in order of completion)", ylabel="best mean accuracy over the targets (%)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="strategy")
    header = ["strategy", "evaluated", "accuracy_mean", "best_so_far", "members", "run_id"]
    return [_save_figure(fig, out / "search_progress.png"), write_csv(out / "search_progress.csv", header, rows)]


def fig_soup_drop(data: ReportData, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    _need_subsets(data)
    soup = data.subsets.get(frozenset(data.domains))
    if soup is None:
        raise MissingData("the study has no subset of all its domains (the soup)")
    rows = []
    for t in data.domains:
        single = data.subsets.get(frozenset([t]))
        if single is not None and single.accuracy(t) is not None and soup.accuracy(t) is not None:
            rows.append([t, single.accuracy(t), soup.accuracy(t), 100.0 * (single.accuracy(t) - soup.accuracy(t))])
    if not rows:
        raise MissingData("the study has no single-adapter subsets")
    mean_drop = sum(r[3] for r in rows) / len(rows)
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], _pct([r[1] for r in rows]), width=0.4, label="own adapter alone")
    ax.bar([x + 0.2 for x in xs], _pct([r[2] for r in rows]), width=0.4,
           label=f"uniform soup of all {len(data.domains)} adapters")
    for x, r in zip(xs, rows):
        ax.annotate(f"-{r[3]:.1f} pts" if r[3] >= 0 else f"+{-r[3]:.1f} pts", (x + 0.2, 100.0 * r[2]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [r[0] for r in rows], rotation=30, ha="right")
    ax.set(title=f"Soup of all adapters vs each target's own adapter (mean drop {mean_drop:.1f} points)",
           xlabel="target domain", ylabel="accuracy on the target (%)")
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=2)
    rows.append(["mean", sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows), mean_drop])
    header = ["target", "single_accuracy", "soup_accuracy", "drop_points"]
    return [_save_figure(fig, out / "soup_drop.png"), write_csv(out / "soup_drop.csv", header, rows)]


def _measure_points(data: ReportData) -> list[tuple[str, tuple[str, ...], float]]:
    """(target or "search", members, accuracy) of the mixtures of two or more adapters."""
    points = [(t, tuple(sorted(s)), r.accuracy(t)) for s, r in data.subsets.items() for t in sorted(s)
              if len(s) >= 2 and r.accuracy(t) is not None]
    if not points:
        points = [("search", tuple(r.members), r.metrics["accuracy_mean"])
                  for runs in data.searches.values() for r in runs if r.k >= 2]
    return points


def fig_measures_vs_accuracy(data: ReportData, out: Path) -> list[Path]:
    """One panel per cached conflict measure: its value vs accuracy of each study subset of two or
    more adapters (per target holding it), or else of each evaluated search mixture, with the
    partial Spearman within each target and size that the gate decides on."""
    if not data.measures:
        raise MissingData("no conflict measure cached in the store; run `signmix fsd CONFIG --measures all`")
    points = _measure_points(data)
    if not points:
        raise MissingData("no evaluated mixture of two or more adapters")
    tables = sorted({t for t, _, _ in points})
    groups = [100 * tables.index(t) + len(m) for t, m, _ in points]
    acc = [a for _, _, a in points]
    fig, axes = _panels(len(data.measures), "Conflict measures vs accuracy (k >= 2; partial Spearman within "
                                           "target and size)")
    rows = []
    for ax, (name, measure) in zip(axes, data.measures.items()):
        values = [measure.subset(m) for _, m, _ in points]
        e = measure_evidence(name, values, groups, acc)
        for t in tables:
            ax.scatter([v for v, p in zip(values, points) if p[0] == t],
                       [100 * p[2] for p in points if p[0] == t], s=12, alpha=0.7, label=t)
        ax.set(title=name, xlabel=f"{name} (mean over the subset's pairs)", ylabel="accuracy (%)")
        ax.plot([], [], " ", label=e.numbers())
        ax.legend(fontsize=6)
        rows += [[t, "+".join(m), len(m), name, v, a] for (t, m, a), v in zip(points, values)]
    return [_save_figure(fig, out / "measures_vs_accuracy.png"),
            write_csv(out / "measures_vs_accuracy.csv", ["target", "members", "k", "measure", "value", "accuracy"],
                      rows)]


# Robust accuracy metrics a mixture may carry, and what attack they measure.
ROBUSTNESS_METRICS = {"bb_robust_accuracy_mean": "black-box word substitution (search.blackbox_attack)",
                      "robust_accuracy_mean": "white-box FGSM (search.fgsm_step)"}


def fig_robustness_front(data: ReportData, out: Path) -> list[Path]:
    """Mean accuracy against mean robust accuracy, one point per evaluated mixture (the searches'
    and the study's), the Pareto front of the two marked; one panel per attack measured."""
    runs = list({r.run_id: r for r in [*(r for rs in data.searches.values() for r in rs),
                                        *data.subsets.values()]}.values())
    panels = [(m, label, [r for r in runs if m in r.metrics and "accuracy_mean" in r.metrics])
              for m, label in ROBUSTNESS_METRICS.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise MissingData("no evaluated mixture with a robust accuracy (search.blackbox_attack or search.fgsm_step)")
    fig, axes = _panels(len(panels), "Accuracy vs robust accuracy of the evaluated mixtures (Pareto front marked)")
    rows = []
    for ax, (metric, label, pts) in zip(axes, panels):
        xy = [(r.metrics["accuracy_mean"], r.metrics[metric]) for r in pts]
        front = [not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in xy) for a, b in xy]
        ax.scatter(_pct([a for a, _ in xy]), _pct([b for _, b in xy]), s=14, alpha=0.6, label="one mixture")
        line = sorted(p for p, f in zip(xy, front) if f)
        ax.plot(_pct([a for a, _ in line]), _pct([b for _, b in line]), color="black", marker="o", markersize=5,
                lw=1, label=f"Pareto front ({len(line)})")
        ax.set(title=label, xlabel="mean accuracy over the targets (%)", ylabel="mean robust accuracy (%)")
        ax.legend(fontsize=7)
        rows += [[metric, "+".join(r.members), r.k, a, b, int(f), r.run_id] for r, (a, b), f in zip(pts, xy, front)]
    header = ["measure", "members", "k", "accuracy_mean", "robust_accuracy_mean", "on_front", "run_id"]
    return [_save_figure(fig, out / "robustness_front.png"), write_csv(out / "robustness_front.csv", header, rows)]


FIGURES: dict[str, Callable[[ReportData, Path], list[Path]]] = {
    "fsd_heatmap": fig_fsd_heatmap, "accuracy_vs_k": fig_accuracy_vs_k, "fsd_vs_accuracy": fig_fsd_vs_accuracy,
    "greedy_vs_bounds": fig_greedy_vs_bounds, "sparsity_curves": fig_sparsity_curves,
    "search_progress": fig_search_progress, "soup_drop": fig_soup_drop,
    "measures_vs_accuracy": fig_measures_vs_accuracy, "robustness_front": fig_robustness_front,
}
