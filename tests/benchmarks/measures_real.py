"""Which conflict measure predicts a merge's accuracy on real adapters? Issue 18's proof.

Adapters and data as ``bench_search_real.py`` (MiniLM-L6, ``seq_bn`` reduction 16, 400
training examples, 2 epochs, one shared initialisation; cached in ``--work``, default
``.bench/realdata``). Two tables, each through the product:

* **in-domain, Amazon** (``--parts amazon``): the exhaustive study of the 4 Amazon domains
  (``signmix study``: every subset containing a target, scored with that target's own head on
  its validation split): 4 targets x 8 subsets.
* **in-domain, FDU-MTL** (``--parts fdu``): the exhaustive study of the 8 FDU domains for the targets
  baby, camera_photo and health_personal_care: 3 targets x 128 subsets (the table of
  ``bench_search_real.py``). Each target's measures probe that target's training rows
  (``--probe-size``, default the product's 128), as a search for it would.
* **serving, FDU-MTL** (``--parts serving``): every group of 2 (and, with ``--serving-sizes 2 3``,
  3) of the 8 FDU domains as one averaged body, each member scored with its own trained head
  on its validation split; the group's accuracy is the mean over its members.

For every measure of ``spaces/measures.py`` (the pairwise ones from
``search.workflows.conflict_measures.conflict_measures``, ``merge_gap`` from ``merge_gaps``): plain
Spearman with accuracy, the partial Spearman within size (pooled: within each target and size)
with a 95% interval (Fisher z) and n, the gate's decision on the whole table, how often the gate
would have rejected an optimum (the gate fitted on a random quarter of the table, as early in a
search, ``--draws`` draws: runs that filter, and runs whose threshold rejects a mixture at the
optimum's accuracy), and the measure's cost in seconds. Run: ``make measures-real``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_search_real as real  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def amazon_table(paths, out: Path):
    """(cfg, rows): rows of (target, members, accuracy) of the Amazon in-domain study."""
    cfg = real.ensure_study(paths, "amazon")
    data = real.read_table(cfg, real.AMAZON, out / "table-realdata-amazon.json")
    rows = [(t, tuple(key.split(",")), acc) for t, subsets in sorted(data["table"].items())
            for key, acc in sorted(subsets.items())]
    return cfg, rows, data["validation_sizes"]


def fdu_table(paths, out: Path):
    """(cfg, rows, validation sizes): rows of (target, members, accuracy) of the FDU in-domain study."""
    cfg = real.ensure_study(paths, "fdu")
    data = real.read_table(cfg, real.COLLECTIONS["fdu"][3], out / "table-realdata-fdu.json")
    rows = [(t, tuple(key.split(",")), acc) for t, subsets in sorted(data["table"].items())
            for key, acc in sorted(subsets.items())]
    return cfg, rows, data["validation_sizes"]


def per_target_values(cfg, rows, probe_size: int, with_merge_gap: bool):
    """As :func:`measure_values`, each target's rows measured with probes of that target alone."""
    values: dict[str, list] = {}
    cost: dict[str, list] = {}
    for t in sorted({t for t, _, _ in rows}):
        cfg_t = cfg.model_copy(update={"search": cfg.search.model_copy(update={"targets": [t],
                                                                               "probe_size": probe_size})})
        mine = [r for r in rows if r[0] == t]
        v, c = measure_values(cfg_t, mine, [t], with_merge_gap)
        for name in v:
            values.setdefault(name, []).extend(v[name])
            cost.setdefault(name, []).append(c[name])
    # rows sorted by target, so the concatenation keeps their order
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    return values, {name: sum(c) / len(c) for name, c in cost.items()}


def probe_cost(paths, target: str, probe_size: int) -> dict:
    """Wall and trial seconds of the probe pass over the 12 adapters (the issue's unit) for
    ``activation_fsd`` alone (the target's rows) and for every pairwise measure (every domain's head
    scored too), on a target whose probes are not cached: ``--parts probe-cost --cost-target imdb``."""
    from search.settings.config import load_config
    from search.workflows.conflict_measures import conflict_measures
    from spaces.measures import PAIRWISE_MEASURES

    cfg = load_config(paths["train"])
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"targets": [target],
                                                                         "probe_size": probe_size})})
    out = {}
    for label, names in (("activation_fsd alone", ["activation_fsd"]), ("every pairwise measure", PAIRWISE_MEASURES)):
        started = time.perf_counter()
        measures = conflict_measures(cfg, list(names), targets=[target], progress=print)
        out[label] = {"wall": time.perf_counter() - started, "trial": measures["activation_fsd"].seconds}
        print(f"{label}: wall {out[label]['wall']:.1f} s, trial time {out[label]['trial']:.1f} s for "
              f"{len(measures['activation_fsd'].names)} adapters ({probe_size} rows of {target})", flush=True)
    return out


def serving_table(paths, sizes, out: Path):
    """(cfg, rows): each group of ``sizes`` FDU domains, averaged, every member scored with its
    own head; rows of ("serving", members, mean accuracy), cached in ``out``."""
    from search.workflows.baselines import evaluate_specs
    from search.settings.config import load_config
    from spaces.spec import make_mixture_spec
    from trainables.store import AdapterStore

    cfg = load_config(paths["fdu"])
    if set(cfg.domains) - set(AdapterStore(cfg.store_path).domains()):
        from search.workflows.adapter_training import run_training

        print("training the adapters the store lacks", flush=True)
        run_training(load_config(paths["train"]), progress=print)
    cache = out / f"serving-{'-'.join(map(str, sizes))}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    groups = [g for s in sizes for g in itertools.combinations(sorted(real.FDU), s)]
    todo = {"+".join(g): make_mixture_spec(members=list(g), targets=list(g), require_targets=False)
            for g in groups if "+".join(g) not in done}
    started = time.perf_counter()
    if todo:
        print(f"serving: evaluating {len(todo)} groups", flush=True)
        for name, r in evaluate_specs(cfg, todo).items():
            done[name] = r["accuracy_mean"]
        done["_seconds_per_group"] = (time.perf_counter() - started) / len(todo)
        cache.write_text(json.dumps(done, indent=1))
    rows = [("serving", tuple(g), done["+".join(g)]) for g in groups]
    return cfg, rows, done.get("_seconds_per_group", float("nan"))


def measure_values(cfg, rows, targets, with_merge_gap: bool):
    """measure -> one value per row, and measure -> cost in seconds."""
    from search.workflows.conflict_measures import conflict_measures, merge_gaps
    from spaces.measures import PAIRWISE_MEASURES
    from spaces.spec import make_mixture_spec

    measures = conflict_measures(cfg, PAIRWISE_MEASURES, targets=targets, progress=print)
    values = {name: [m.subset(members) for _, members, _ in rows] for name, m in measures.items()}
    cost = {name: m.seconds for name, m in measures.items()}
    if with_merge_gap:
        specs = [make_mixture_spec(members=list(members), targets=list(members) if t == "serving" else [t],
                                   require_targets=False) for t, members, _ in rows]
        started = time.perf_counter()
        gaps, per_mixture = merge_gaps(cfg, specs, targets=targets)
        values["merge_gap"] = [gaps[s.key] for s in specs]
        cost["merge_gap"] = per_mixture
        print(f"merge_gap: {len(specs)} mixtures in {time.perf_counter() - started:.0f} s", flush=True)
    return values, cost


def gate_rejections(values, rows, tolerance: float, draws: int) -> tuple[int, int]:
    """Of ``draws`` gates fitted on a random quarter of each table (>= 8 rows): how many filter, and
    how many of those reject a mixture at the table's optimum (its measure above the threshold)."""
    from spaces.gate_evidence import fsd_gate_evidence

    filtering = rejecting = 0
    tables: dict[str, list[int]] = {}
    for i, (t, _, _) in enumerate(rows):
        tables.setdefault(t, []).append(i)
    for d in range(draws):
        rng = random.Random(d)
        for t, idx in tables.items():
            sample = rng.sample(idx, max(8, len(idx) // 4)) if len(idx) > 8 else idx
            ev = fsd_gate_evidence([values[i] for i in sample], [len(rows[i][1]) for i in sample],
                                   [rows[i][2] for i in sample], tolerance=tolerance)
            if ev.decision != "filter":
                continue
            filtering += 1
            best = max(rows[i][2] for i in idx)
            rejecting += any(values[i] > ev.threshold for i in idx if rows[i][2] == best)
    return filtering, rejecting


def report(title: str, rows, values, cost, tolerance: float, draws: int, eval_seconds: float) -> list[dict]:
    from spaces.measure_ranking import format_p, measure_evidence

    tables = sorted({t for t, _, _ in rows})
    groups = [100 * tables.index(t) + len(m) for t, m, _ in rows]  # within each target and size
    acc = [a for _, _, a in rows]
    out = []
    print(f"\n=== {title}: {len(rows)} mixtures in {len(tables)} table(s); gate tolerance {tolerance:.3f} ===")
    print(f"{'measure':<16}{'Spearman (p)':>18}{'partial within size [95%]':>34}{'p':>9}{'n':>5}  {'gate':<10}"
          f"{'filters':>9}{'rejects optimum':>17}{'cost s':>9}")
    for name, v in values.items():
        e = measure_evidence(name, v, groups, acc, tolerance=tolerance)
        runs = draws * len(tables)
        filtering, rejecting = gate_rejections(v, rows, tolerance, draws)
        row = {"measure": name, "spearman": e.spearman, "spearman_p": e.spearman_p, "partial": e.partial,
               "low": e.low, "high": e.high, "partial_p": e.partial_p, "n": e.n, "decision": e.gate.decision,
               "filtering": filtering, "rejecting": rejecting, "runs": runs, "cost_seconds": cost.get(name)}
        out.append(row)
        sp = "-" if math.isnan(e.spearman) else f"{e.spearman:+.2f} ({e.spearman_p:.2g})"
        part = "-" if math.isnan(e.partial) else f"{e.partial:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"
        print(f"{name:<16}{sp:>18}{part:>34}{format_p(e.partial_p):>9}{e.n:>5}  {e.gate.decision:<10}"
              f"{f'{filtering}/{runs}':>9}{f'{rejecting}/{runs}':>17}{cost.get(name, float('nan')):>9.2f}")
    if "merge_gap" in cost and eval_seconds == eval_seconds:
        print(f"merge_gap costs {cost['merge_gap']:.2f} s a mixture against {eval_seconds:.2f} s for a full "
              f"evaluation ({cost['merge_gap'] / eval_seconds:.0%})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "realdata")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "measures-real")
    parser.add_argument("--parts", nargs="+", choices=["amazon", "fdu", "serving", "probe-cost"],
                        default=["amazon", "serving"])
    parser.add_argument("--cost-target", default="imdb", help="the target of --parts probe-cost (uncached)")
    parser.add_argument("--probe-size", type=int, default=None, help="probe rows per target of --parts fdu "
                        "(default: the product's, 128)")
    parser.add_argument("--serving-sizes", nargs="+", type=int, default=[2])
    parser.add_argument("--draws", type=int, default=20, help="gates fitted on random quarters of each table")
    parser.add_argument("--no-merge-gap", action="store_true")
    args = parser.parse_args(argv)
    import logging

    import torch

    from trainables.significance import half_width_for

    torch.set_num_threads(2)
    logging.getLogger("search").setLevel(logging.WARNING)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = real.ensure_configs(args.work)
    results = {}
    if "amazon" in args.parts:
        cfg, rows, sizes = amazon_table(paths, args.out)
        values, cost = measure_values(cfg, rows, list(real.AMAZON), not args.no_merge_gap)
        results["amazon"] = report("in-domain, Amazon (4 targets x 8 subsets)", rows, values, cost,
                                   half_width_for(min(sizes.values())), args.draws, float("nan"))
    if "fdu" in args.parts:
        from spaces.measures import DEFAULT_PROBE_SIZE

        cfg, rows, sizes = fdu_table(paths, args.out)
        values, cost = per_target_values(cfg, rows, args.probe_size or DEFAULT_PROBE_SIZE, not args.no_merge_gap)
        results["fdu"] = report("in-domain, FDU-MTL (3 targets x 128 subsets)", rows, values, cost,
                                half_width_for(min(sizes.values())), args.draws, float("nan"))
    if "probe-cost" in args.parts:
        from spaces.measures import DEFAULT_PROBE_SIZE

        results["probe_cost"] = probe_cost(paths, args.cost_target, args.probe_size or DEFAULT_PROBE_SIZE)
    if "serving" in args.parts:
        from search.proposals.validation_size import validation_sizes

        cfg, rows, per_group = serving_table(paths, args.serving_sizes, args.out)
        values, cost = measure_values(cfg, rows, list(real.FDU), not args.no_merge_gap)
        every = cfg.model_copy(update={"search": cfg.search.model_copy(update={"targets": list(real.FDU)})})
        results["serving"] = report(f"serving, FDU-MTL groups of {args.serving_sizes}", rows, values, cost,
                                    half_width_for(min(validation_sizes(every).values())), args.draws, per_group)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
