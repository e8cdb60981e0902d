"""Search efficiency on real adapters: regret against the exhaustive table, and the FSD gate.

The headline of the search-efficiency section of BENCHMARKS.md (the generated problem,
``bench_search_efficiency.py``, stays as the unit-level check). Run: ``make bench-search-real``.

Data (computed once through the product, then cached)
-----------------------------------------------------
Twelve ``seq_bn`` adapters (reduction 16) on the pretrained MiniLM-L6 encoder, 400
training examples and 2 epochs each, one shared initialisation: the 4 Amazon domains of
``../shared/data/amazon_multidomain`` and the 8 FDU-MTL domains of ``../shared/data/fdu_mtl8``.
The exhaustive in-domain study of each collection (``signmix study``: every subset that
contains a study target, evaluated once on each of its member targets with that target's own
head) gives, for each target, the validation accuracy of *every* mixture the search could
propose: 2^7 = 128 subsets per FDU target (baby, camera_photo, health_personal_care), and
only 2^3 = 8 per Amazon target (books, dvd, electronics, kitchen), a second, much smaller
table on which 5% of the space is a single evaluation.

The searched space is the subset space of the paper: uniform average, each target's own
head, no pruning. The larger space of issue 9 (merge operators and their parameters,
weights, head refit) is too large to enumerate, so it has no exhaustive reference here.

In ``--work`` (default ``.bench/realdata``) the script looks for ``realdata.yaml`` (the 12
domains: ``signmix train``), ``realdata-amazon.yaml`` and ``realdata-fdu.yaml`` (the studies:
``signmix study``), writes the ones that are missing, trains the adapters the store lacks
(``run_training``, about 25 min on 2 cores) and runs a study whose MLflow experiment does not
exist (``run_study``: about 5 min for Amazon, an hour for FDU). A study that is incomplete
(still running, or interrupted) stops the script with the command that completes it. The
table (target -> subset -> validation accuracy, and the validation sizes) is read once from
MLflow into ``--out``/``table-<experiment>.json``; the FSDs come from the store's adapters
(``load_sign_index``).

Protocol
--------
For each target: the real ``SignConflictSearcher`` around ``make_strategy(...)``, driven by
hand (``search_driving.drive_search``: suggest -> the table's accuracy -> on_trial_complete,
one trial at a time), with the product's FSD gate: ``max_fsd: auto`` (``FsdGate(mode="auto")``
with the target's validation half-width as tolerance, as ``signmix search`` builds it) or
``null`` (mode ``off``). Runs: ``tpe`` (with the product's greedy warm start) and ``random``,
each with and without the gate, over ``--seeds`` seeds, and ``greedy_fsd`` (Alg. 1,
deterministic). Each budget (5, 10, 15, 20% of the exhaustive count, rounded up) is its own
run: TPE's start-up count depends on the budget.

Reported: regret = optimum - best found, in accuracy points (x100), mean [min, max] over
seeds; the evaluations the gate saved (distinct mixtures it rejected); its false rejections
(rejected mixtures better than the run's best) and whether an optimum (any mixture at the
optimum's accuracy) was ever rejected; its decision and coefficient at the end of each run.
Over each whole table: the partial Spearman of FSD (mean pairwise) with accuracy given the
number of members (within each size), its p and n, per target and pooled (within each
target and size), and the gate's decision on it; beside it the linear control on the rank
of k (the gate's first version) and ``signmix fsd CONFIG``'s own line.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_driving import drive_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
AMAZON = ("books", "dvd", "electronics", "kitchen")
FDU = ("baby", "camera_photo", "health_personal_care", "imdb", "magazines", "sports_outdoors", "toys_games",
       "video")
# collection -> (experiment/config name, data folder, domains, study targets)
COLLECTIONS = {"fdu": ("realdata-fdu", "fdu_mtl8", FDU, ("baby", "camera_photo", "health_personal_care")),
               "amazon": ("realdata-amazon", "amazon_multidomain", AMAZON, AMAZON)}
FRACTIONS = (0.05, 0.10, 0.15, 0.20)
RUNS = (("tpe", "auto"), ("tpe", "null"), ("random", "auto"), ("random", "null"), ("greedy_fsd", "null"))
# TPE handing over to mutations of the best mixtures (search.tpe_switch_after) after this many Optuna trials, far
# earlier than the product's default of 2,000 so that the switch happens within these budgets:
# what the switch costs in search quality, against "tpe null". Reported as "tpe>mutate null".
SWITCH_AFTER = 10
# Mixtures per Ray trial (search.mixtures_per_trial) of the row "tpe/4 null": each batch is
# proposed whole before any of it is told. What batching costs TPE in search quality.
BATCH = 4
# The conflict gate on the measures of spaces/measures.py (issue 18), as `signmix search` builds it under
# search.conflict_measure with max_fsd: auto: "<strategy> activation_fsd" filters with activation FSD and
# orders tpe's greedy warm start by it; "tpe conflict-auto" tracks every pairwise measure and filters with
# the one its own evaluations give evidence for (its warm start orders by weight FSD: no earlier evidence).
# Run with --measures; each target's measures probe that target's training rows, as its search would.
MEASURE_RUNS = (("tpe", "activation_fsd"), ("tpe", "conflict-auto"), ("random", "activation_fsd"))


# --- the data: configs, adapters, study, table --------------------------------------------------

def _config(name: str, domains: dict, work: Path, study_targets=None) -> dict:
    from search.cli.demo import demo_base_model

    cfg = {"name": name, "base_model": demo_base_model(), "adapter": {"method": "seq_bn", "reduction_factor": 16},
           "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                        "max_train_examples": 400},
           "domains": domains, "store": str(work / "adapters"),
           "ray": {"num_cpus": 2, "storage_path": str(work / "runs")}, "resources": {"cpu": 1},
           "search": {"targets": [next(iter(domains))], "max_concurrent": 2, "eval_batch_size": 64}}
    if study_targets is not None:
        cfg["study"] = {"targets": list(study_targets), "sweep_ratios": [], "sparse_sizes": []}
    return cfg


def ensure_configs(work: Path) -> dict[str, Path]:
    """The training config and the two study configs in ``work`` (written when missing)."""
    work.mkdir(parents=True, exist_ok=True)
    every = {}
    paths = {}
    for key, (name, folder, domains, targets) in COLLECTIONS.items():
        doms = {d: {"path": str(SHARED / folder / d)} for d in domains}
        every.update(doms)
        paths[key] = work / f"{name}.yaml"
        if not paths[key].exists():
            paths[key].write_text(yaml.safe_dump(_config(name, doms, work, targets)))
    paths["train"] = work / "realdata.yaml"
    if not paths["train"].exists():
        paths["train"].write_text(yaml.safe_dump(_config("realdata", dict(sorted(every.items())), work)))
    return paths


def ensure_study(paths: dict[str, Path], key: str):
    """The study config of ``key``, after training the adapters and running the study if absent."""
    from search.settings.config import load_config
    from search.tracking.experiment_runs import open_existing_experiment
    from trainables.store import AdapterStore

    cfg = load_config(paths[key])
    if set(cfg.domains) - set(AdapterStore(cfg.store_path).domains()):
        from search.workflows.adapter_training import run_training

        print(f"training the adapters the store {cfg.store_path} lacks ({paths['train']}; ~25 min on 2 cores)")
        run_training(load_config(paths["train"]), progress=print)
    _, experiment_id = open_existing_experiment(cfg)
    if experiment_id is None:
        from search.workflows.study import run_study

        print(f"running the exhaustive study {paths[key]} (Amazon ~5 min, FDU ~1 h on 2 cores)")
        run_study(cfg, progress=print)
    return cfg


def read_table(cfg, targets, cache: Path) -> dict:
    """Target -> {members joined by ',': validation accuracy}, validation sizes; from the cache
    or MLflow. Raises SystemExit naming the command when a target's table is incomplete."""
    if cache.exists():
        return json.loads(cache.read_text())
    from search.tracking.experiment_runs import mixture_runs, open_existing_experiment
    from search.tracking.layout import STUDY_PART_TAG
    from search.proposals.validation_size import validation_sizes

    client, experiment_id = open_existing_experiment(cfg)
    table: dict[str, dict[str, float]] = {t: {} for t in targets}
    for run in mixture_runs(client, experiment_id, status="evaluated"):
        if run.tags.get(STUDY_PART_TAG) != "subsets" or run.prune_ratio != 0:
            continue
        for t in set(run.targets) & set(targets):
            if run.accuracy(t) is not None:
                table[t].setdefault(",".join(run.members), run.accuracy(t))
    expected = 2 ** (len(cfg.domains) - 1)
    short = {t: len(v) for t, v in table.items() if len(v) < expected}
    if short:
        raise SystemExit(f"the study {cfg.experiment_name} is incomplete: {short} of {expected} subsets per target "
                         f"(still running, or interrupted); complete it with `signmix study CONFIG` and run again")
    with_targets = cfg.model_copy(update={"search": cfg.search.model_copy(update={"targets": list(targets)})})
    data = {"experiment": cfg.experiment_name, "tracking_uri": cfg.tracking_uri, "domains": sorted(cfg.domains),
            "validation_sizes": validation_sizes(with_targets), "table": table,
            "read": time.strftime("%Y-%m-%d %H:%M")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data


# --- the gate's coefficients over the whole table ----------------------------------------------

def _linear_control(fsd, acc, k) -> float:
    """Partial Spearman with the rank of k as a linear control (the gate's first version)."""
    import numpy as np
    from scipy.stats import rankdata

    rk = rankdata(k)
    res = [rankdata(v) - np.polyval(np.polyfit(rk, rankdata(v), 1), rk) for v in (fsd, acc)]
    return float(np.corrcoef(*res)[0, 1])


def table_evidence(data: dict, index, tolerance: dict[str, float]) -> list[dict]:
    """Per target and pooled: the gate's evidence over every subset of the table."""
    from scipy.stats import spearmanr

    from spaces.gate_evidence import fsd_gate_evidence, partial_spearman

    rows, pooled = [], ([], [], [], [])
    for ti, (t, subsets) in enumerate(sorted(data["table"].items())):
        members = [key.split(",") for key in subsets]
        fsd = [index.subset_fsd(m, "mean_pairwise") for m in members]
        k = [len(m) for m in members]
        acc = list(subsets.values())
        ev = fsd_gate_evidence(fsd, k, acc, tolerance=tolerance[t])
        rows.append({"target": t, "rho": ev.rho, "p": ev.p_value, "n": ev.n, "decision": ev.decision,
                     "threshold": ev.threshold, "linear_rho": _linear_control(fsd, acc, k),
                     "plain_rho": float(spearmanr(fsd, acc)[0]), "k_rho": float(spearmanr(k, acc)[0])})
        for col, values in zip(pooled, (fsd, [100 * (ti + 1) + x for x in k], acc, k)):
            col.extend(values)
    fsd, groups, acc, k = pooled
    rho, p = partial_spearman(fsd, acc, groups)  # within each (target, size)
    ev = fsd_gate_evidence(fsd, groups, acc, tolerance=min(tolerance.values()))
    rows.append({"target": "pooled", "rho": rho, "p": p, "n": len(fsd), "decision": ev.decision,
                 "threshold": ev.threshold, "linear_rho": float("nan"),
                 "plain_rho": float(spearmanr(fsd, acc)[0]), "k_rho": float(spearmanr(k, acc)[0])})
    return rows


def cli_fsd_line(config: Path, out: Path) -> str:
    """``signmix fsd CONFIG``'s FSD gate line (the evidence it reads from MLflow)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "signmix"), "fsd", str(config),
                           "--out", str(out / f"fsd-{config.stem}.csv")], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FSD gate evidence")]
    return lines[0] if lines else f"(signmix fsd exited {proc.returncode}: {proc.stderr.strip()[-300:]})"


# --- the searches -----------------------------------------------------------------------------

def target_measures(cfg, target: str, probe_size: int) -> dict:
    """Every pairwise conflict measure of the config's adapters, probing ``target``'s training rows
    (what a search for ``target`` computes; cached in the store)."""
    from search.workflows.conflict_measures import conflict_measures
    from spaces.measures import PAIRWISE_MEASURES

    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"targets": [target],
                                                                         "probe_size": probe_size})})
    return conflict_measures(cfg, PAIRWISE_MEASURES, targets=[target], progress=print)


def make_gate(gate_mode: str, space, tolerance: float, measures: dict | None):
    """(the gate, what orders the warm start: None for the sign index) of a run's gate column."""
    from search.proposals.fsd_gate import FsdGate
    from search.proposals.measure_gate import MeasureGate

    if gate_mode in ("auto", "null"):
        return FsdGate(mode="auto" if gate_mode == "auto" else "off", space=space, tolerance=tolerance), None
    candidates = list(measures) if gate_mode == "conflict-auto" else [gate_mode]
    gate = MeasureGate(measures=measures, candidates=candidates, mode="auto", space=space, tolerance=tolerance)
    return gate, None if gate_mode == "conflict-auto" else measures[gate_mode]


def run_target(target: str, data: dict, index, tolerance: float, seeds: int, switch_after: int = SWITCH_AFTER,
               measures: dict | None = None) -> dict:
    """Every run of :data:`RUNS` (and, given ``measures``, of :data:`MEASURE_RUNS`) for one target:
    per run, budget and seed, the numbers reported."""
    from spaces.space import MixtureSpace

    accs = data["table"][target]
    space = MixtureSpace(domains=tuple(data["domains"]), targets=(target,), max_fsd=None)
    size = space.size()
    if size != len(accs):
        raise SystemExit(f"the table of {target} has {len(accs)} subsets, the space {size}: delete the cached table and run again")
    optimum = max(accs.values())
    oracle = lambda spec: accs[",".join(sorted(spec.members))]  # noqa: E731
    key_of = {space.to_mixture_spec(q).key: ",".join(sorted(space.to_mixture_spec(q).members))
              for q in space.enumerate()}
    optima = {key for key, members in key_of.items() if accs[members] == optimum}
    budgets = sorted({math.ceil(f * size - 1e-9) for f in FRACTIONS})
    out = {"size": size, "optimum": optimum, "budgets": budgets, "runs": {},
           "optimum_members": sorted(m for m, a in accs.items() if a == optimum), "alone": accs[target],
           "within_half": sum(optimum - a <= 0.005 + 1e-12 for a in accs.values())}
    plans = ([(n, g, None, 1) for n, g in RUNS] + [("tpe", "null", switch_after, 1), ("tpe", "null", None, BATCH)]
             + ([(n, g, None, 1) for n, g in MEASURE_RUNS] if measures else []))
    for name, gate_mode, switch, batch in plans:
        cells = {b: [] for b in budgets}
        for seed in ([0] if name == "greedy_fsd" else range(seeds)):
            for b in budgets:
                gate, order = make_gate(gate_mode, space, tolerance, measures)
                snap = drive_search(name, space, index, oracle, seed, b, [b], f"real-{target}-{name}-{gate_mode}-"
                                    f"{seed}-{b}-{switch}-{batch}", gate=gate, switch_after=switch,
                                    mixtures_per_trial=batch, order=order)[b]
                filtered = [accs[key_of[key]] for key in snap["filtered_keys"]]
                cells[b].append({"regret": (optimum - snap["best"]) * 100, "evaluated": snap["evaluated"],
                                 "saved": len(filtered), "false_rejections": sum(a > snap["best"] for a in filtered),
                                 "optimum_filtered": bool(optima & snap["filtered_keys"]),
                                 "decision": snap["decision"], "rho": snap["rho"], "p": snap["p"], "n": snap["n"],
                                 "threshold": snap["threshold"], "ever_filtered": snap["ever_filtered"],
                                 "measure": getattr(gate, "chosen", None) or "weight_fsd"})
        label = "tpe>mutate" if switch else f"tpe/{batch}" if batch > 1 else name
        out["runs"][f"{label} {gate_mode}"] = cells
    return out


# --- report -----------------------------------------------------------------------------------

def _mean(xs) -> float:
    return sum(xs) / len(xs)


def report(collection: str, results: dict, evidence: list[dict], cli_line: str, sizes: dict) -> dict:
    """Prints the collection's tables; returns the goals' verdicts."""
    targets = list(results)
    first = results[targets[0]]
    fr = [f"{math.ceil(f * first['size'] - 1e-9)}" for f in FRACTIONS]
    print(f"\n=== {collection}: {len(targets)} targets, {first['size']} subsets each; budgets "
          f"{' / '.join(f'{f:.0%}={b}' for f, b in zip(FRACTIONS, fr))} evaluations; validation sizes "
          f"{sizes} ===")
    for t in targets:
        r = results[t]
        print(f"  {t}: optimum {r['optimum'] * 100:.2f} ({' | '.join(r['optimum_members'])}), own adapter alone "
              f"{r['alone'] * 100:.2f}; subsets within 0.5 points of the optimum: {r['within_half']} of {r['size']}")
    print("Regret (optimum - best found, accuracy points): mean [min, max] over seeds")
    print(f"{'target':<22}{'run':<24}" + "".join(f"{f'{f:.0%} ({b})':>19}" for f, b in zip(FRACTIONS, fr))
          + f"{'evals made':>12}")
    goals = {"tpe_within_half_at_15pct": True, "tpe_beats_random": True, "tpe_beats_random_without_gate": True,
             "optimum_never_filtered": True, "gate_never_increases_regret": True}
    for t in targets + ["mean"]:
        for run in results[targets[0]]["runs"]:
            cells = []
            for f in FRACTIONS:
                b = math.ceil(f * first["size"] - 1e-9)
                if t == "mean":
                    per_seed = [_mean([c["regret"] for c in results[x]["runs"][run][b]]) for x in targets]
                    cells.append(f"{_mean(per_seed):6.2f}")
                else:
                    r = [c["regret"] for c in results[t]["runs"][run][b]]
                    cells.append(f"{_mean(r):6.2f} [{min(r):4.1f},{max(r):4.1f}]")
            last = math.ceil(FRACTIONS[-1] * first["size"] - 1e-9)
            made = _mean([c["evaluated"] for x in (targets if t == "mean" else [t])
                          for c in results[x]["runs"][run][last]])
            print(f"{t:<22}{run:<24}" + "".join(f"{c:>19}" for c in cells) + f"{made:>12.1f}")
    for t in targets:
        runs = results[t]["runs"]
        means = {f: {run: _mean([c["regret"] for c in runs[run][math.ceil(f * first["size"] - 1e-9)]])
                     for run in runs} for f in FRACTIONS}
        # Goal 1: tpe (the product's default: gate on) within 0.5 points at some budget <= 15%.
        goals["tpe_within_half_at_15pct"] &= min(means[f]["tpe auto"] for f in FRACTIONS if f <= 0.15 + 1e-9) <= 0.5

        def beats(a: float, b: float) -> bool:  # lower mean regret, or both at the optimum
            return a < b or a == b == 0

        for f, m in means.items():
            goals["tpe_beats_random"] &= beats(m["tpe auto"], m["random auto"])
            goals["tpe_beats_random_without_gate"] &= beats(m["tpe null"], m["random null"])
            goals["gate_never_increases_regret"] &= all(m[f"{s} auto"] <= m[f"{s} null"] + 1e-9
                                                        for s in ("tpe", "random"))
        goals["optimum_never_filtered"] &= not any(c["optimum_filtered"] for cells in runs.values()
                                                   for per in cells.values() for c in per)
    print("\nFSD gate (max_fsd: auto) per target and budget: distinct mixtures rejected (= evaluations saved), "
          "false rejections (rejected and better than the run's best), runs that rejected an optimum, "
          "runs in which it ever decided to filter, end decisions, regret with - without the gate (mean; seeds "
          "worse)")
    for t in targets:
        for s in ("tpe", "random"):
            for f in FRACTIONS:
                b = math.ceil(f * first["size"] - 1e-9)
                on, off = results[t]["runs"][f"{s} auto"][b], results[t]["runs"][f"{s} null"][b]
                decisions: dict[str, int] = {}
                for c in on:
                    decisions[c["decision"]] = decisions.get(c["decision"], 0) + 1
                worse = sum(a["regret"] > o["regret"] + 1e-9 for a, o in zip(on, off))
                rhos = [c["rho"] for c in on if not math.isnan(c["rho"])]
                rho = f"rho {min(rhos):+.2f}..{max(rhos):+.2f}" if rhos else "rho -"
                print(f"  {t:<21}{s:<7}{f:>4.0%}  saved {_mean([c['saved'] for c in on]):4.1f}  false "
                      f"{_mean([c['false_rejections'] for c in on]):4.1f}  optimum rejected "
                      f"{sum(c['optimum_filtered'] for c in on)}/{len(on)}  filtered in "
                      f"{sum(c['ever_filtered'] is not None for c in on)}/{len(on)}  "
                      f"{', '.join(f'{d} {n}' for d, n in sorted(decisions.items()))} ({rho}, n "
                      f"{_mean([c['n'] for c in on]):.0f})  delta {_mean([a['regret'] - o['regret'] for a, o in zip(on, off)]):+.2f} "
                      f"({worse} worse)")
    measure_runs = [run for run in results[targets[0]]["runs"] if run.split()[1] not in ("auto", "null")]
    if measure_runs:
        print("\nConflict gate on another measure (search.conflict_measure), per target and budget: distinct "
              "mixtures rejected, false rejections, runs that rejected an optimum, runs in which it filtered, "
              "the measure it checked at the end, regret with - without a gate (same strategy, null)")
        for t in targets:
            for run in measure_runs:
                s = run.split()[0]
                for f in FRACTIONS:
                    b = math.ceil(f * first["size"] - 1e-9)
                    on, off = results[t]["runs"][run][b], results[t]["runs"][f"{s} null"][b]
                    chosen: dict[str, int] = {}
                    for c in on:
                        chosen[c.get("measure", "-")] = chosen.get(c.get("measure", "-"), 0) + 1
                    print(f"  {t:<21}{run:<26}{f:>4.0%}  saved {_mean([c['saved'] for c in on]):4.1f}  false "
                          f"{_mean([c['false_rejections'] for c in on]):4.1f}  optimum rejected "
                          f"{sum(c['optimum_filtered'] for c in on)}/{len(on)}  filtered in "
                          f"{sum(c['ever_filtered'] is not None for c in on)}/{len(on)}  checks "
                          f"{', '.join(f'{m} {n}' for m, n in sorted(chosen.items()))}  delta "
                          f"{_mean([a['regret'] - o['regret'] for a, o in zip(on, off)]):+.2f}")
        b5 = math.ceil(FRACTIONS[0] * first["size"] - 1e-9)
        today = _mean([_mean([c["regret"] for c in results[t]["runs"]["tpe auto"][b5]]) for t in targets])
        for run in (r for r in measure_runs if r.startswith("tpe ")):
            mean5 = _mean([_mean([c["regret"] for c in results[t]["runs"][run][b5]]) for t in targets])
            # Issue 18's goal: TPE's regret at 5% of the space at most half of today's (tpe, FSD gate auto).
            goals[f"{run}: regret at 5% <= half of tpe auto's ({mean5:.2f} vs {today:.2f})"] = (
                mean5 <= today / 2 + 1e-9)
    print("\nThe gate's evidence over the whole table (FSD: mean pairwise; partial Spearman given k, within each "
          "size; pooled: within each target and size)")
    print(f"{'target':<22}{'rho':>7}{'p':>8}{'n':>5}  {'decision':<10}{'linear-k rho':>13}{'plain rho':>11}"
          f"{'rho(k, acc)':>13}")
    for e in evidence:
        linear = "-" if math.isnan(e["linear_rho"]) else f"{e['linear_rho']:+.2f}"
        print(f"{e['target']:<22}{e['rho']:>+7.2f}{e['p']:>8.3f}{e['n']:>5}  {e['decision']:<10}"
              f"{linear:>13}{e['plain_rho']:>+11.2f}{e['k_rho']:>+13.2f}")
    print(f"signmix fsd: {cli_line}")
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "realdata",
                        help="configs, adapter store and MLflow store of the studies (default .bench/realdata)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "search-real",
                        help="the cached tables and the results JSON (default .bench/search-real)")
    parser.add_argument("--collections", nargs="+", choices=sorted(COLLECTIONS), default=["fdu", "amazon"])
    parser.add_argument("--seeds", type=int, default=5, help="search seeds 0..SEEDS-1 (default 5)")
    parser.add_argument("--measures", action="store_true",
                        help="also run the conflict gate on the measures of issue 18 (probe passes: minutes, cached)")
    parser.add_argument("--probe-size", type=int, default=None,
                        help="probe rows per target for --measures (default: the product's, 128)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    import logging

    import optuna
    import torch

    from trainables.significance import half_width_for
    from trainables.store import load_sign_index

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("search").setLevel(logging.WARNING)
    started = time.perf_counter()
    paths = ensure_configs(args.work)
    verdicts = {}
    for key in args.collections:
        name, _, domains, targets = COLLECTIONS[key]
        cfg = ensure_study(paths, key)
        data = read_table(cfg, targets, args.out / f"table-{name}.json")
        _, index = load_sign_index(cfg.store_path, data["domains"])
        tolerance = {t: half_width_for(max(1, n)) for t, n in data["validation_sizes"].items()}
        evidence = table_evidence(data, index, tolerance)
        line = cli_fsd_line(paths[key], args.out)
        measures = {}
        if args.measures:
            from spaces.measures import DEFAULT_PROBE_SIZE

            measures = {t: target_measures(cfg, t, args.probe_size or DEFAULT_PROBE_SIZE) for t in targets}
        results = {t: run_target(t, data, index, tolerance[t], args.seeds, measures=measures.get(t))
                   for t in targets}
        verdicts[key] = report(name, results, evidence, line, data["validation_sizes"])
        (args.out / f"results-{name}.json").write_text(json.dumps(
            {"results": results, "evidence": evidence, "signmix_fsd": line, "goals": verdicts[key],
             "date": time.strftime("%Y-%m-%d")}, indent=1, default=str))
    print()
    for key, goals in verdicts.items():
        print(f"Goals ({COLLECTIONS[key][0]}): " + "; ".join(f"{g} {'HOLDS' if ok else 'DOES NOT HOLD'}"
                                                           for g, ok in goals.items()))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
