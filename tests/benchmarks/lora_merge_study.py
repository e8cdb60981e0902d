"""LoRA mixtures merged on ΔW (``lora_merge: delta_svd``) against averaged factors (``factors``).

Issue 11, item 4, on the four Amazon review domains of ``../shared/data``: one LoRA adapter
per domain (``adapter: {method: lora, rank: 8, alpha: 16}``) on the pretrained MiniLM-L6
encoder, trained once with ``signmix train`` (400 examples, 2 epochs, one shared seed) into
``--work``; then ``signmix study`` twice over the same store, once per ``search.lora_merge``,
as two MLflow experiments, with ``study: {sweep_ratios: [], sparse_sizes: []}``: only the 15
subsets, each evaluated once on each of its members (the targets) with the target's own head.

Printed, every number read back from MLflow (the newest study of each experiment) and from
the store:

* per subset and target, the validation accuracy under ``delta_svd`` and under ``factors``;
* the mean difference (delta_svd - factors) over the (subset, target) pairs of two or more
  members, with a percentile bootstrap interval over those pairs (per-mixture accuracies,
  resampled as pairs);
* the FSD-accuracy correlation under each merge, over the same pairs: plain Spearman, the
  partial Spearman controlling for the number of members k (:func:`spaces.gate_evidence.partial_spearman`),
  and controlling for (k, target); rho, p and n. FSD is the product's: the store's sign
  index (:func:`trainables.store.load_sign_index`), on ΔW for LoRA;
* the FSD of each pair of adapters on ΔW against on the raw factors A and B;
* the mean ``lora_svd_error`` of the ``delta_svd`` mixtures of two or more members.

Run: ``make lora-merge-study`` (``--domains 1 --train-only`` trains the first domain alone,
to check from its validation accuracy that a LoRA learns at the chosen learning rate; the
full run reuses it).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "amazon_multidomain"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
MERGES = ("delta_svd", "factors")


def write_config(work: Path, args: argparse.Namespace, merge: str) -> Path:
    """Writes the config of one experiment (``lora-study-<merge>``); every one shares the store."""
    from search.cli.demo import demo_base_model

    domains = DOMAINS[:args.domains]
    config = {
        "name": f"lora-study-{merge}", "base_model": demo_base_model(),
        "adapter": {"method": "lora", "rank": args.rank, "alpha": args.alpha},
        "training": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": 16, "max_length": 128,
                     "seed": 0, "max_train_examples": args.max_train, "max_eval_examples": args.max_eval},
        "domains": {d: {"path": str(SHARED / d)} for d in domains},
        "search": {"targets": [domains[0]], "max_concurrent": 2, "eval_batch_size": 64, "lora_merge": merge},
        "study": {"sweep_ratios": [], "sparse_sizes": []},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }
    path = work / f"lora-study-{merge}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def newest_study_runs(config_path: Path) -> list:
    """The evaluated ``subsets`` runs of the newest study of the config's experiment (MixtureRun)."""
    from search.settings.config import load_config
    from search.tracking.experiment_runs import mixture_runs, open_existing_experiment, search_parents
    from search.tracking.layout import STRATEGY_TAG, STUDY_PART_TAG

    cfg = load_config(config_path)
    client, experiment_id = open_existing_experiment(cfg)
    if experiment_id is None:
        return []
    studies = [p for p in search_parents(client, experiment_id) if p.data.tags.get(STRATEGY_TAG) == "study"]
    if not studies:
        return []
    runs = mixture_runs(client, experiment_id, status="evaluated", parent_id=studies[0].info.run_id)
    return [r for r in runs if r.tags.get(STUDY_PART_TAG) == "subsets"]


def bootstrap_mean(values: list[float], *, n_resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Returns the mean of ``values`` and its 95% percentile bootstrap interval (resampling the values)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_resamples, len(arr)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(arr.mean()), float(low), float(high)


def fsd_table(store: Path, domains: list[str]) -> list[tuple[str, str, float, float]]:
    """Returns (a, b, FSD on ΔW, FSD on the factors) for every pair of stored adapters."""
    from spaces.fsd import SignIndex
    from trainables.store import load_sign_index

    weights, on_delta = load_sign_index(store, domains)
    on_factors = SignIndex.from_weights(weights)
    names = list(on_delta.names)
    rows = []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            rows.append((a, names[j], float(on_delta.matrix[i, j]), float(on_factors.matrix[i, j])))
    return rows


def correlations(points: list[tuple[str, tuple, float, float]]) -> dict[str, tuple[float, float, int]]:
    """Spearman of FSD with accuracy: plain, partial given k, partial given (k, target); (rho, p, n)."""
    from scipy.stats import spearmanr

    from spaces.gate_evidence import partial_spearman

    targets = sorted({p[0] for p in points})
    fsd = [p[2] for p in points]
    acc = [p[3] for p in points]
    k = [len(p[1]) for p in points]
    k_target = [len(p[1]) * 100 + targets.index(p[0]) for p in points]
    plain = spearmanr(fsd, acc)
    out = {"spearman": (float(plain.statistic), float(plain.pvalue), len(points))}
    out["partial | k"] = (*partial_spearman(fsd, acc, k), len(points))
    out["partial | k, target"] = (*partial_spearman(fsd, acc, k_target), len(points))
    return out


def fmt(x: float, spec: str = ".3f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "lora-study"))
    parser.add_argument("--domains", type=int, default=4, choices=range(1, 5), help="the first N Amazon domains")
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--max-eval", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--train-only", action="store_true", help="train (and print validation accuracy), no study")
    parser.add_argument("--restudy", action="store_true", help="run the studies again even when complete")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    from search.cli.main import main as signmix
    from trainables.store import AdapterStore

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    configs = {m: write_config(work, args, m) for m in MERGES}
    code = signmix(["train", str(configs[MERGES[0]])])
    if code:
        return code
    store = AdapterStore(work / "adapters")
    domains = list(DOMAINS[:args.domains])
    print("\nvalidation accuracy of each LoRA adapter after training (store's signmix.json):")
    for d in domains:
        m = store.meta(d)["metrics"]
        print(f"  {d:<12} val_accuracy {m['val_accuracy']:.3f}  train_loss {m['train_loss']:.3f}")
    if args.train_only:
        return 0

    expected = sum(len(s) for s in _subsets(domains))  # (subset, target) pairs
    runs = {}
    for merge in MERGES:
        found = newest_study_runs(configs[merge])
        if args.restudy or sum(len(r.members) for r in found) < expected:
            code = signmix(["study", str(configs[merge])])
            if code:
                return code
            found = newest_study_runs(configs[merge])
        else:
            print(f"{merge}: the newest study is complete, reused (--restudy to run it again)")
        runs[merge] = {frozenset(r.members): r for r in found}
    return report(work, domains, runs)


def _subsets(domains: list[str]) -> list[tuple[str, ...]]:
    import itertools

    return [s for k in range(1, len(domains) + 1) for s in itertools.combinations(domains, k)]


def report(work: Path, domains: list[str], runs: dict[str, dict]) -> int:
    """Prints the tables of the module docstring; returns 0, or 1 when a study lacks a mixture."""
    rows = []  # (target, members, fsd, acc_delta_svd, acc_factors, svd_error)
    for subset in _subsets(domains):
        key = frozenset(subset)
        if any(key not in runs[m] for m in MERGES):
            print(f"missing from a study: {'+'.join(subset)}", file=sys.stderr)
            return 1
        a, b = runs["delta_svd"][key], runs["factors"][key]
        fsd = a.metrics.get("fsd_mean_pairwise", math.nan)
        for t in subset:
            rows.append((t, subset, fsd, a.accuracy(t), b.accuracy(t), a.metrics.get("lora_svd_error", math.nan)))

    print("\nvalidation accuracy per subset and target (LoRA r=8; FSD: mean pairwise on ΔW)")
    print(f"  {'target':<12} {'members':<34} {'k':>2} {'FSD':>6} {'delta_svd':>10} {'factors':>8} {'diff':>7}"
          f" {'svd_err':>8}")
    for t, s, fsd, x, y, err in sorted(rows, key=lambda r: (r[0], len(r[1]), r[1])):
        print(f"  {t:<12} {'+'.join(s):<34} {len(s):>2} {fmt(fsd):>6} {fmt(x):>10} {fmt(y):>8} {fmt(x - y, '+.3f'):>7}"
              f" {fmt(err):>8}")

    multi = [r for r in rows if len(r[1]) >= 2]
    diffs = [r[3] - r[4] for r in multi]
    mean, low, high = bootstrap_mean(diffs)
    wins = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs), sum(d == 0 for d in diffs)
    print(f"\ndelta_svd - factors, (subset, target) pairs with k >= 2: mean {mean:+.4f} "
          f"[{low:+.4f}, {high:+.4f}] (95% bootstrap over the {len(diffs)} pairs); "
          f"delta_svd better/worse/equal: {wins[0]}/{wins[1]}/{wins[2]}")
    for k in sorted({len(r[1]) for r in rows}):
        ds = [r[3] - r[4] for r in rows if len(r[1]) == k]
        print(f"  k={k}: mean {sum(ds) / len(ds):+.4f} over {len(ds)} pairs; "
              f"delta_svd {sum(r[3] for r in rows if len(r[1]) == k) / len(ds):.4f}, "
              f"factors {sum(r[4] for r in rows if len(r[1]) == k) / len(ds):.4f}")

    print("\nFSD-accuracy correlation over the (subset, target) pairs with k >= 2")
    print(f"  {'merge':<10} {'measure':<22} {'rho':>7} {'p':>8} {'n':>3}")
    for i, merge in enumerate(MERGES):
        stats = correlations([(r[0], r[1], r[2], r[3 + i]) for r in multi])
        for name, (rho, p, n) in stats.items():
            print(f"  {merge:<10} {name:<22} {fmt(rho, '+.3f'):>7} {fmt(p, '.3g'):>8} {n:>3}")

    errors = [r[5] for r in multi if not math.isnan(r[5])]
    per_k = {k: [r[5] for r in multi if len(r[1]) == k and r[0] == r[1][0]] for k in range(2, len(domains) + 1)}
    per_mix = [e for es in per_k.values() for e in es]
    if errors:
        print(f"\nlora_svd_error (||ΔW - B·A·s|| / ||ΔW|| of the rank-r refactorisation), delta_svd mixtures "
              f"with k >= 2: mean {sum(per_mix) / len(per_mix):.4f} over {len(per_mix)} mixtures; "
              + ", ".join(f"k={k}: {sum(es) / len(es):.4f}" for k, es in per_k.items() if es))

    print("\nFSD of each pair of LoRA adapters: on ΔW = B·A·alpha/r (the product's) vs on the factors A, B")
    pairs = fsd_table(work / "adapters", domains)
    for a, b, on_delta, on_factors in pairs:
        print(f"  {a:<12} {b:<12} ΔW {on_delta:.4f}   factors {on_factors:.4f}")
    if pairs:
        print(f"  mean         {'':<12} ΔW {sum(p[2] for p in pairs) / len(pairs):.4f}   "
              f"factors {sum(p[3] for p in pairs) / len(pairs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
