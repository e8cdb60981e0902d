"""Driver scale: how fast the search's driver turns proposals into finished trials.

A real ``run_search`` (Ray Tune, the SignConflictSearcher behind its pre-filter, the
configured Optuna strategy, the MLflow callbacks and tracker) over a synthetic adapter store
of ``--domains`` adapters, with a trivial trial that reports a deterministic fake accuracy
at once. Only this script patches anything: the adapter store (random weights, so no model
is trained), the validation-size check (there is no data) and the trial.

Reports trials per second per block of 500 finished trials, the strategy's ``ask`` latency
against the number of finished Optuna trials, the pre-filter's time, the MLflow calls (count
and time per method) and the driver's resident memory. Run:

    .venv/bin/python tests/benchmarks/bench_driver.py --trials 1000
    .venv/bin/python tests/benchmarks/bench_driver.py --trials 10000 --out driver_10k.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

BLOCK = 250


def fake_accuracy(members: list[str]) -> float:
    """A deterministic accuracy with structure TPE can learn: each domain helps or hurts by a
    fixed amount, and conflict grows with the number of members."""
    import hashlib

    score = 0.6
    for m in members:
        h = int(hashlib.sha256(m.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        score += (h - 0.4) * 0.08
    return max(0.0, min(1.0, score - 0.01 * len(members)))


def trivial_trial(config, *, adapter_weights, experiment, store_root) -> None:
    """Reports the metrics a mixture trial reports, instantly, without a checkpoint (each
    mixture of a batch with its ``batch_index``, as the mixture trial does)."""
    from ray import tune

    for i, item in enumerate(config.get("batch", [config])):
        members = sorted(item["spec"]["members"])
        acc = fake_accuracy(members)
        metrics = {"accuracy_mean": acc, "fsd": item.get("fsd", float("nan")), "k": len(members),
                   "evaluated_fraction": 1.0, "eval_seconds": 0.0, "worker_pid": os.getpid(),
                   **({"batch_index": i} if "batch" in config else {})}
        for t in item["spec"]["targets"]:
            metrics[f"accuracy/{t}"] = acc
        tune.report(metrics)


def oracle_optimum(names: list[str], index, max_fsd: float | None) -> float:
    """The best fake accuracy of a mixture that contains the target (``names[0]``) and passes
    the FSD filter: what a perfect search would find."""
    import itertools

    target, others = names[0], names[1:]
    best = -1.0
    for k in range(len(others) + 1):
        for rest in itertools.combinations(others, k):
            members = [target, *rest]
            if max_fsd is None or len(members) == 1 or index.subset_fsd(members) <= max_fsd:
                best = max(best, fake_accuracy(sorted(members)))
    return best


def synthetic_weights(n: int, p: int, seed: int = 0) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(p, generator=gen)
    return {f"d{i:02d}": {"layer.0.w": base + 1.5 * torch.randn(p, generator=gen)} for i in range(n)}


class Recorder:
    """Timestamps of finished trials, ask latencies, MLflow calls and the driver's RSS."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.t0 = time.perf_counter()
        self.finished: list[float] = []
        self.asks: list[tuple[int, float]] = []  # (finished Optuna trials, seconds)
        self.tells = 0
        self.pids: set[int] = set()  # the trial worker processes that reported
        self.mlflow = collections.defaultdict(lambda: [0, 0.0])
        self.rss: list[tuple[float, float, int]] = []  # (seconds, MiB, finished)
        self.load: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def progress(self, line: str) -> None:
        if line.startswith("[") and "accuracy" in line:
            self.finished.append(time.perf_counter() - self.t0)
        elif not line.startswith("["):
            print(line, file=sys.stderr, flush=True)

    def sample(self) -> None:
        while not self._stop.wait(1.0):
            self.rss.append((time.perf_counter() - self.t0, self.proc.memory_info().rss / 2**20, len(self.finished)))
            self.load.append((time.perf_counter() - self.t0, os.getloadavg()[0]))
            if len(self.rss) % 30 == 0:
                print(f"  {self.rss[-1][0]:6.0f}s {len(self.finished):6d} trials, driver {self.rss[-1][1]:.0f} MiB, "
                      f"load {self.load[-1][1]:.1f}", file=sys.stderr, flush=True)

    def __reduce__(self):
        # Ray Tune pickles the callbacks (and so ``progress``'s recorder) into its experiment
        # snapshot: the snapshot keeps a stand-in, this process keeps the live recorder.
        return (Recorder, ())

    def start(self) -> None:
        threading.Thread(target=self.sample, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def instrument(rec: Recorder) -> None:
    """Wrap the strategy's ask/tell and the MLflow client's calls (this process only)."""
    from search.proposals import strategies
    from search.tracking import mlflow_client

    ask, tell = strategies.OptunaStrategy.ask, strategies.OptunaStrategy.tell

    @functools.wraps(ask)
    def timed_ask(self):
        t = time.perf_counter()
        out = ask(self)
        rec.asks.append((rec.tells, time.perf_counter() - t))
        return out

    @functools.wraps(tell)
    def counted_tell(self, *a, **k):
        rec.tells += 1
        return tell(self, *a, **k)

    strategies.OptunaStrategy.ask, strategies.OptunaStrategy.tell = timed_ask, counted_tell

    from search.tracking.tracker import SearchTracker

    finish = SearchTracker.finish_mixture

    @functools.wraps(finish)
    def finish_noting_pid(self, spec, status, *, metrics=None, **kwargs):
        if metrics and "worker_pid" in metrics:
            rec.pids.add(int(metrics["worker_pid"]))
        return finish(self, spec, status, metrics=metrics, **kwargs)

    SearchTracker.finish_mixture = finish_noting_pid

    call = mlflow_client.RetryingClient._call

    @functools.wraps(call)
    def timed_call(self, name, *a, **k):
        t = time.perf_counter()
        try:
            return call(self, name, *a, **k)
        finally:
            rec.mlflow[name][0] += 1
            rec.mlflow[name][1] += time.perf_counter() - t

    mlflow_client.RetryingClient._call = timed_call


def patch_inputs(weights: dict) -> None:
    """The synthetic store and no validation data: what this benchmark does not measure."""
    import search.workflows.mixture_search
    from spaces.fsd import SignIndex

    index = SignIndex.from_weights(weights)
    search.workflows.mixture_search.load_sign_index = lambda root, domains: (weights, index)
    search.workflows.mixture_search.validation_tolerance = lambda cfg, progress: (0.05, [])


def build_config(work: Path, args, weights: dict):
    from search.settings.config import validate_config
    from spaces.fsd import SignIndex

    names = sorted(weights)
    max_fsd = None
    if args.filter_fraction > 0:
        # A fixed threshold that the given fraction of random mixtures exceeds.
        import random

        index, rnd = SignIndex.from_weights(weights), random.Random(0)
        fsds = sorted(index.subset_fsd([names[0]] + rnd.sample(names[1:], rnd.randint(1, len(names) - 1)))
                      for _ in range(2000))
        max_fsd = fsds[int(len(fsds) * (1 - args.filter_fraction))]
    data = work / "data"
    data.mkdir(exist_ok=True)
    raw = {"name": "driver", "base_model": "synthetic", "domains": {n: {"path": str(data)} for n in names},
           "search": {"strategy": args.strategy, "targets": [names[0]], "num_mixtures": args.trials,
                      # the sign index's FSD: a synthetic store has no data to probe, and max_fsd is on its scale
                      "max_fsd": max_fsd, "conflict_measure": "weight_fsd",
                      "max_concurrent": args.concurrent, "confirm": False,
                      "mixtures_per_trial": args.mixtures_per_trial,
                      **({} if args.switch_after < 0 else {"tpe_switch_after": args.switch_after or None})},
           "resources": {"cpu": 1}, "ray": {"storage_path": str(work / "runs"), "num_cpus": args.concurrent},
           "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}, "store": str(work / "adapters")}
    return validate_config(raw, base_dir=work)


def blocks(rec: Recorder) -> list[dict]:
    rows, prev_t = [], 0.0
    for end in range(BLOCK, len(rec.finished) + 1, BLOCK):
        t = rec.finished[end - 1]
        asks = [s for n, s in rec.asks if end - BLOCK <= n < end]
        rss = [m for _, m, f in rec.rss if f <= end]
        load = [l for s, l in rec.load if prev_t <= s <= t]
        rows.append({"trials": end, "seconds": t, "trials_per_s": BLOCK / (t - prev_t),
                     "ask_ms_median": 1e3 * sorted(asks)[len(asks) // 2] if asks else float("nan"),
                     "ask_ms_max": 1e3 * max(asks) if asks else float("nan"),
                     "driver_mib": max(rss) if rss else float("nan"),
                     "load": sum(load) / len(load) if load else float("nan")})
        prev_t = t
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000, help="distinct mixtures to evaluate (default 1000)")
    parser.add_argument("--domains", type=int, default=16, help="adapters in the synthetic store (default 16)")
    parser.add_argument("--strategy", default="tpe", help="search.strategy (default tpe)")
    parser.add_argument("--concurrent", type=int, default=4, help="trials at once (default 4)")
    parser.add_argument("--filter-fraction", type=float, default=0.2,
                        help="fraction of random mixtures over max_fsd (default 0.2; 0: no filter)")
    parser.add_argument("--switch-after", type=int, default=-1,
                        help="search.tpe_switch_after (default: the product's; 0: TPE to the end)")
    parser.add_argument("--mixtures-per-trial", type=int, default=1,
                        help="search.mixtures_per_trial: mixtures one Ray trial evaluates (default 1)")
    parser.add_argument("--out", help="write every measurement as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    weights = synthetic_weights(args.domains, 4096)
    patch_inputs(weights)
    rec = Recorder()
    instrument(rec)
    from search.workflows.mixture_search import run_search_with

    with tempfile.TemporaryDirectory(prefix="signmix-driver-") as work:
        cfg = build_config(Path(work), args, weights)
        print(f"driver benchmark: {args.trials} trials, {args.domains} adapters, strategy {args.strategy}, "
              f"{args.concurrent} at once, max_fsd {cfg.search.max_fsd}; {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f} at start", flush=True)
        rec.t0 = time.perf_counter()
        rec.start()
        summary = run_search_with(cfg, progress=rec.progress, trial=trivial_trial)
        rec.stop()
        actors = len(rec.pids)
        db_mib = os.path.getsize(os.path.join(work, "mlflow.db")) / 2**20

    rows = blocks(rec)
    print(f"\n{'trials':>7} {'s':>7} {'trials/s':>9} {'ask ms (median)':>15} {'ask ms (max)':>12} "
          f"{'driver MiB':>10} {'load':>5}")
    for r in rows:
        print(f"{r['trials']:>7} {r['seconds']:>7.1f} {r['trials_per_s']:>9.1f} {r['ask_ms_median']:>15.1f} "
              f"{r['ask_ms_max']:>12.1f} {r['driver_mib']:>10.0f} {r['load']:>5.1f}")
    total = rec.finished[-1] if rec.finished else float("nan")
    proposals = summary.evaluated + summary.filtered
    print(f"\n{summary.evaluated} evaluated, {summary.filtered} filtered, {summary.repeats} repeats in "
          f"{summary.seconds:.0f}s (first to last finished trial {total:.0f}s: "
          f"{len(rec.finished) / total:.1f} trials/s); driver peak {max(m for _, m, _ in rec.rss):.0f} MiB")
    from spaces.fsd import SignIndex

    optimum = oracle_optimum(sorted(weights), SignIndex.from_weights(weights), cfg.search.max_fsd)
    print(f"best found {summary.best_accuracy:.4f}, optimum {optimum:.4f} (regret {100 * (optimum - summary.best_accuracy):.2f} "
          f"points); search.tpe_switch_after {cfg.search.tpe_switch_after}")
    print(f"trial worker processes: {actors} (a new one each time Ray Tune could not reuse an actor)")
    print(f"pre-filter: {summary.prefilter_seconds:.2f}s in all, "
          f"{1e3 * summary.prefilter_seconds / max(1, proposals):.2f} ms per proposal")
    print(f"strategy ask: {len(rec.asks)} calls, {sum(s for _, s in rec.asks):.1f}s in all")
    calls = sum(n for n, _ in rec.mlflow.values())
    print(f"MLflow: {calls} calls, {sum(s for _, s in rec.mlflow.values()):.1f}s in all "
          f"({calls / max(1, len(rec.finished)):.1f} per trial); database {db_mib:.0f} MiB")
    for name, (n, s) in sorted(rec.mlflow.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<24} {n:>7} calls {s:>7.1f}s {1e3 * s / n:>7.2f} ms/call")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "args": vars(args), "blocks": rows, "asks": rec.asks, "rss": rec.rss, "load": rec.load,
            "mlflow": {k: list(v) for k, v in rec.mlflow.items()}, "evaluated": summary.evaluated,
            "filtered": summary.filtered, "repeats": summary.repeats, "seconds": summary.seconds,
            "prefilter_seconds": summary.prefilter_seconds, "best": summary.best_accuracy, "optimum": optimum},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
