"""Benchmarks 1 and 2: signmix against the hardware limit and against a naive loop.

Setup (built once, cached in ``--work``): the pretrained MiniLM-L6 encoder, one ``seq_bn``
adapter per domain on the four Amazon review domains of ``../shared/data`` plus two of the
demo's generated domains (6 domains, 32 mixtures that contain the target ``books``), each
mixture evaluated on 200 validation examples.

1. *Against the limit*: examples per second of a real exhaustive search (Ray Tune trials,
   MLflow tracking) divided by the raw forward throughput of the same model with one
   adapter on the same examples (plain ``torch.inference_mode()`` loop, same batch size,
   max length and length-sorted batches; the better of one process with all the search's
   cores as threads or one single-threaded process per core).
2. *Against a naive loop*: what a user writes by hand (load the model, ``average_adapter``,
   evaluate, ``mlflow.start_run`` and log, for every subset): time per evaluated example,
   and the time until signmix (TPE behind the pre-filter) holds the mixture that the naive
   loop finds best after trying every subset.

Every ratio is taken in this one run. Run: ``make bench`` (needs ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "amazon_multidomain"
BATCH, MAX_LENGTH, EVAL_N, CPUS = 64, 128, 200, 2


def write_config(work: Path, *, strategy: str, max_fsd, name: str) -> Path:
    from search.cli.demo import demo_base_model
    from search.cli.demo_data import write_demo_domains

    demo = write_demo_domains(work / "demo-data", seed=0, n_train=200, n_validation=EVAL_N, n_test=20)
    domains = {d: {"path": str(SHARED / d)} for d in ("books", "dvd", "electronics", "kitchen")}
    domains.update({d: {"path": str(demo[d])} for d in ("movies", "support")})
    config = {
        "name": name, "base_model": demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 1, "learning_rate": 2e-3, "batch_size": 16, "max_length": MAX_LENGTH, "seed": 0,
                     "max_train_examples": 200, "max_eval_examples": EVAL_N},
        "domains": domains,
        "search": {"strategy": strategy, "targets": ["books"], "num_mixtures": 32, "prune_ratios": [0.0],
                   "max_fsd": max_fsd, "max_concurrent": CPUS,
                   "eval_batch_size": BATCH, "seed": 0},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": CPUS},
        "store": str(work / "adapters"),
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _raw_loop(base_model: str, adapter_dir: str, domain: dict, n_examples: int, threads: int, barrier, results) -> None:
    """One raw inference process: MiniLM + one adapter, batches sorted by length (as the
    search's trials evaluate), ``threads`` torch threads; puts (examples, start, end)."""
    import torch

    from trainables.data import encode_split, iter_batches, load_domain
    from trainables.model import load_encoder

    torch.set_num_threads(threads)
    model, tok = load_encoder(base_model)
    model.set_active_adapters(model.load_adapter(adapter_dir, use_safetensors=True))
    data = load_domain("books", domain, splits=("validation",), max_eval_examples=EVAL_N)
    enc = encode_split(tok, data.splits["validation"], MAX_LENGTH)
    batches = [{k: v for k, v in b.items() if k != "labels"} for _, b in iter_batches(enc, BATCH, sort_by_length=True)]
    sizes = [len(b["input_ids"]) for b in batches]
    with torch.inference_mode():
        model(**batches[0])  # warm-up, not timed
        barrier.wait()  # every process starts timing together
        done, start = 0, time.time()
        while done < n_examples:
            for batch, size in zip(batches, sizes):
                model(**batch)
                done += size
    results.put((done, start, time.time()))


def raw_forward_eps(cfg, n_examples: int) -> tuple[float, dict[str, float]]:
    """Examples/s of the tightest plain inference loop on the search's cores: the better of one
    process with CPUS threads and CPUS processes with one thread each (examples of all
    processes over the wall time from the first start to the last end)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    args = (cfg.base_model, str(Path(cfg.store_path) / "books"), cfg.domains["books"].model_dump())
    layouts = {f"1 process x {CPUS} threads": (1, CPUS), f"{CPUS} processes x 1 thread": (CPUS, 1)}
    measured = {}
    for label, (procs, threads) in layouts.items():
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        workers = [ctx.Process(target=_raw_loop, args=(*args, n_examples // procs, threads, barrier, results))
                   for _ in range(procs)]
        for w in workers:
            w.start()
        runs = [results.get(timeout=1800) for _ in workers]
        for w in workers:
            w.join()
        measured[label] = sum(r[0] for r in runs) / (max(r[2] for r in runs) - min(r[1] for r in runs))
    return max(measured.values()), measured


def naive_loop(cfg, specs) -> tuple[float, int, dict]:
    """The hand-written loop: returns (seconds, examples evaluated, accuracy by members)."""
    import mlflow
    import torch
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    from trainables.data import load_domain

    torch.set_num_threads(CPUS)
    mlflow.set_tracking_uri(f"sqlite:///{Path(cfg.storage_path) / 'naive.db'}")
    if mlflow.get_experiment_by_name("naive") is None:  # artifacts beside the database, not in ./mlruns
        mlflow.create_experiment("naive", artifact_location=(Path(cfg.storage_path) / "naive-artifacts").as_uri())
    mlflow.set_experiment("naive")
    data = load_domain("books", cfg.domains["books"].model_dump(), splits=("validation",), max_eval_examples=EVAL_N)
    texts, labels = list(data.splits["validation"]["text"]), list(data.splits["validation"]["label"])
    results, examples, started = {}, 0, time.perf_counter()
    for members in specs:
        model = AutoAdapterModel.from_pretrained(cfg.base_model)
        tok = AutoTokenizer.from_pretrained(cfg.base_model)
        for d in members:
            model.load_adapter(str(Path(cfg.store_path) / d), load_as=d, with_head=False, use_safetensors=True)
        model.load_head(str(Path(cfg.store_path) / "books"), load_as="books_head", use_safetensors=True)
        if len(members) > 1:
            model.average_adapter("mix", list(members))
            model.set_active_adapters("mix")
        else:
            model.set_active_adapters(members[0])
        model.active_head = "books_head"
        model.eval()
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                batch = tok(texts[i:i + BATCH], truncation=True, max_length=MAX_LENGTH, padding=True,
                            return_tensors="pt")
                pred = model(**batch).logits.argmax(-1).tolist()
                correct += sum(p == y for p, y in zip(pred, labels[i:i + BATCH]))
        with mlflow.start_run(run_name="+".join(members)):
            mlflow.log_params({"members": ",".join(members)})
            mlflow.log_metric("accuracy", correct / len(texts))
        results[",".join(sorted(members))] = correct / len(texts)
        examples += len(texts)
    return time.perf_counter() - started, examples, results


def time_to_best(cfg, summary, best_members: str) -> float | None:
    """Seconds from the search's start until the mixture ``best_members`` was evaluated."""
    from tests_support import mlflow_runs

    runs = mlflow_runs(cfg, f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")
    (parent,) = mlflow_runs(cfg, f"attributes.run_id = '{summary.parent_run_id}'")
    hits = [r for r in runs if r.data.params.get("members") == best_members
            and r.data.tags.get("signmix.status") == "evaluated"]
    return (hits[0].info.end_time - parent.info.start_time) / 1000 if hits else None


def worker_timeline(cfg, summary, started_at: float) -> tuple[float, float, float]:
    """Seconds from the search's start to each worker's first trial, between two trials on
    one worker, and from each worker's last trial to the search's end (means over workers and
    gaps), from Ray Tune's ``result.json`` of every trial (``timestamp``: whole seconds).
    ``started_at``: the wall clock when ``run_search`` was called."""
    import itertools
    import json
    import statistics

    from tests_support import mlflow_runs

    from search.tracking.layout import RAY_EXPERIMENT_TAG

    (parent,) = mlflow_runs(cfg, f"attributes.run_id = '{summary.parent_run_id}'")
    trials: dict[int, list[tuple[float, float]]] = {}
    for path in Path(parent.data.tags[RAY_EXPERIMENT_TAG]).glob("*/result.json"):
        last = json.loads(path.read_text().strip().splitlines()[-1])
        trials.setdefault(last["pid"], []).append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    spans = [sorted(v) for v in trials.values()]
    gaps = [b[0] - a[1] for span in spans for a, b in itertools.pairwise(span)]
    return (statistics.mean(span[0][0] for span in spans) - started_at,
            statistics.mean(gaps) if gaps else float("nan"),
            started_at + summary.seconds - statistics.mean(span[-1][1] for span in spans))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench"), help="cache of data, adapters and runs")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("adapters").setLevel(logging.ERROR)
    from search.runtime.cluster import connect_ray
    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    exhaustive = load_config(write_config(work, strategy="exhaustive", max_fsd=None, name="bench-exhaustive"))
    tpe = load_config(write_config(work, strategy="tpe", max_fsd="auto", name="bench-tpe"))
    run_training(exhaustive)
    connect_ray(exhaustive)  # the cluster's start is not part of a search's time

    started_at = time.time()
    s = run_search(exhaustive)
    from tests_support import mlflow_runs

    children = mlflow_runs(exhaustive, f"tags.`mlflow.parentRunId` = '{s.parent_run_id}' and tags.`signmix.kind` = 'mixture'")
    examples = int(sum(r.data.metrics.get("examples", 0) for r in children))
    signmix_eps = examples / s.seconds
    raw_eps, layouts = raw_forward_eps(exhaustive, examples)
    m = lambda k: sum(r.data.metrics.get(k, 0.0) for r in children)  # noqa: E731
    n = len(children)
    trial_total = m("eval_seconds")
    print(f"\nBenchmark 1: {n} mixtures x {EVAL_N} examples, MiniLM-L6, batch {BATCH}, max_length {MAX_LENGTH}, "
          f"{CPUS} CPUs")
    print(f"  signmix search      {signmix_eps:8.1f} examples/s  ({examples} examples in {s.seconds:.1f} s)")
    print(f"  raw forward loop    {raw_eps:8.1f} examples/s  (the better of: "
          + ", ".join(f"{k} {v:.1f}" for k, v in layouts.items()) + "; batches sorted by length)")
    print(f"  ratio               {signmix_eps / raw_eps:8.3f}   (goal >= 0.95 against this tight loop)")
    print("  where a search's time goes (seconds per trial):")
    print(f"    model + data setup (first trial of a worker)  {m('setup_seconds') / n:7.3f}")
    print(f"    building the mixture (average, prune)          {m('build_seconds') / n:7.3f}")
    print(f"    evaluation (forward passes)                    {m('predict_seconds') / n:7.3f}")
    print(f"    rest of the trial (checkpoint, reporting)      {(trial_total - m('setup_seconds') - m('build_seconds') - m('predict_seconds')) / n:7.3f}")
    print(f"    outside the trials (start, Ray, end; below)    {(s.seconds * CPUS - trial_total) / n:7.3f}")
    print(f"    pre-filter and FSD (driver)                    {s.prefilter_seconds / n:7.3f}")
    print(f"    MLflow logging (driver)                        {s.mlflow_seconds / n:7.3f}")
    before, between, after = worker_timeline(exhaustive, s, started_at)
    print("  the time outside the trials, from the trial workers' own clocks (1 s resolution, averaged):")
    print(f"    before a worker's first trial (search setup, Tune's start, the worker's start)  {before:6.2f} s")
    print(f"    between two trials on one worker                                            {between:6.3f} s")
    print(f"    after a worker's last trial (the search's end, a worker idle at the tail)    {after:6.2f} s")
    rss = [r.data.metrics["worker_peak_rss_mib"] for r in children if "worker_peak_rss_mib" in r.data.metrics]
    if rss:
        print(f"  peak memory of a trial worker (RSS): {max(rss):.0f} MiB (MiniLM-L6 + 6 adapters' weights mapped "
              f"from the object store)")

    members = [sorted(r.data.params["members"].split(",")) for r in children]
    naive_s, naive_examples, naive_acc = naive_loop(exhaustive, members)
    best_members = max(sorted(naive_acc), key=lambda k: (naive_acc[k], -k.count(",")))
    t = run_search(tpe)
    found = time_to_best(tpe, t, best_members)
    print(f"\nBenchmark 2: against a naive loop over the same {n} mixtures")
    print(f"  naive loop          {naive_examples / naive_s:8.1f} examples/s  ({naive_s:.1f} s)")
    print(f"  signmix search      {signmix_eps:8.1f} examples/s")
    print(f"  ratio (per example) {signmix_eps / (naive_examples / naive_s):8.2f}   (goal >= 1.0)")
    print(f"  best mixture (naive, after all {n}): {best_members} accuracy {naive_acc[best_members]:.4f}")
    if found is None:
        print(f"  signmix tpe + pre-filter did not evaluate it within {t.evaluated} mixtures "
              f"(best found {t.best_accuracy:.4f}: {t.best_label}); {t.filtered} proposals filtered")
    else:
        print(f"  signmix tpe + pre-filter held it after {found:.1f} s ({t.evaluated} evaluated, "
              f"{t.filtered} filtered in {t.seconds:.1f} s)")
        print(f"  time-to-best ratio  {naive_s / found:8.2f}   (goal >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
