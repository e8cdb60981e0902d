"""Issue 5: every optimisation of the mixture search measured before and after, in one run.

Same setup as ``bench_search.py`` (its ``write_config``, ``raw_forward_eps``, ``naive_loop``
and the ``.bench/`` cache of trained adapters): MiniLM-L6, the four Amazon review domains
of ``../shared/data`` plus two generated domains, 32 mixtures that contain ``books``, 200
validation examples each, batch 64, max length 128, a 2-CPU Ray cluster. Every ratio is
taken within this one run.

Part 1, end to end (benchmarks 1 and 2 before and after the optimisations): the same
exhaustive search through ``run_search_with`` (``run_search`` with a trial of its own) with

- *before*: :func:`before_trial` below, what a straightforward Ray Tune implementation
  does in every trial (load the base model, ``load_adapter`` each member from disk,
  ``average_adapter``, tokenise the target's validation split, evaluate unsorted batches,
  one report), with ``reuse_actors=False``;
- *after*: signmix's own trial (``trainables.mixture_trial.evaluate_mixture``).

Part 2, one row per optimisation, each before and after on the same data in this run:
actor reuse, object store vs disk, in-place mixtures, the tokenisation cache,
length-sorted batches, ASHA over validation chunks, bfloat16 evaluation (speed, accuracy
and ranking of the mixtures) and sign bits (pre-filter decision vs int8 signs).

Run: ``python tests/benchmarks/bench_optimisations.py`` (about 12 minutes on 2 quiet
cores); ``--quick`` runs every part on a few mixtures to check that it works (its numbers
mean little).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Mapping

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import (BATCH, CPUS, EVAL_N, MAX_LENGTH, ROOT, SHARED, naive_loop,  # noqa: E402
                          raw_forward_eps, write_config)


# --------------------------------------------------------------------------------------------
# The "before" trial: no actor reuse, nothing cached, adapters from disk, add/average, unsorted.
# --------------------------------------------------------------------------------------------

def before_trial(config: Mapping, *, adapter_weights: Mapping, experiment: Mapping, store_root: str) -> None:
    """A mixture trial as a straightforward Ray Tune implementation writes it.

    Every trial: load the base model and tokenizer, ``load_adapter`` each member from the
    store (safetensors on disk), ``average_adapter`` them into one adapter and activate
    it, load the targets' heads, tokenise each target's validation split, evaluate it in
    batches in file order under ``torch.no_grad()``, and report once, with the metrics and
    the checkpoint (adapter + heads, as ``MixtureModel.save`` writes them) that the searcher,
    the MLflow callback and ``signmix export`` read. ``adapter_weights`` (the object store)
    is not used. Unpruned mixtures only (the benchmark's ``prune_ratios: [0.0]``).
    """
    import shutil
    import tempfile

    import torch
    from ray import tune

    from spaces.spec import MixtureSpec
    from trainables.data import encode_split, iter_batches, load_domain
    from trainables.evaluate import HEAD_FILES, classification_metrics
    from trainables.model import load_encoder
    from trainables.store import ADAPTER_NAME, AdapterStore

    # As the real trial does: the same threads, so that only the optimisations differ.
    torch.set_num_threads(max(1, int(experiment["resources"]["cpu"])))
    spec = MixtureSpec.from_dict(config["spec"])
    if spec.prune_method != "none" and spec.prune_ratio > 0:
        raise ValueError("before_trial evaluates unpruned mixtures only")
    training, store = experiment["training"], AdapterStore(store_root)

    started = time.perf_counter()
    model, tokenizer = load_encoder(experiment["base_model"], trust_remote_code=experiment["trust_remote_code"])
    setup_seconds = time.perf_counter() - started

    built = time.perf_counter()
    for member in spec.members:
        model.load_adapter(str(store.path(member)), load_as=member, with_head=False, use_safetensors=True)
    model.average_adapter(ADAPTER_NAME, list(spec.members), weights=list(spec.weights))
    model.set_active_adapters(ADAPTER_NAME)
    build_seconds = time.perf_counter() - built

    t0 = time.perf_counter()
    heads, encoded, num_labels = {}, {}, {}
    for target in spec.targets:
        name = model.load_head(str(store.path(target)), load_as=f"head_{target}", use_safetensors=True)
        heads[target] = name if isinstance(name, str) else f"head_{target}"
        meta = store.meta(target)
        num_labels[target] = int(meta["num_labels"])
        data = load_domain(target, experiment["domains"][target], splits=("validation",),
                           max_eval_examples=training["max_eval_examples"], seed=training["seed"],
                           trust_remote_code=experiment["trust_remote_code"], label_names=meta["label_names"])
        encoded[target] = encode_split(tokenizer, data.splits["validation"], training["max_length"])
    model.eval()
    setup_seconds += time.perf_counter() - t0

    t0 = time.perf_counter()
    preds: dict[str, dict[int, int]] = {}
    with torch.no_grad():
        for target, enc in encoded.items():
            model.active_head = heads[target]
            preds[target] = {}
            for rows, batch in iter_batches(enc, experiment["search"]["eval_batch_size"], sort_by_length=False):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                preds[target].update(zip(rows, logits.argmax(dim=-1).tolist()))
    predict_seconds = time.perf_counter() - t0

    params = [p for n, p in model.named_parameters() if f".{ADAPTER_NAME}." in n]
    metrics = {"fsd": config.get("fsd", float("nan")), "k": spec.k,
               "sparsity": sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params),
               "build_seconds": build_seconds, "setup_seconds": setup_seconds, "predict_seconds": predict_seconds,
               "examples": sum(len(p) for p in preds.values()), "evaluated_fraction": 1.0}
    for target, enc in encoded.items():
        m = classification_metrics(preds[target], enc.labels, num_labels[target])
        metrics[f"accuracy/{target}"], metrics[f"macro_f1/{target}"] = m["accuracy"], m["macro_f1"]
    metrics["accuracy_mean"] = sum(metrics[f"accuracy/{t}"] for t in spec.targets) / len(spec.targets)
    metrics["eval_seconds"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="signmix-before-") as tmp:
        model.save_adapter(tmp, ADAPTER_NAME, with_head=False, use_safetensors=True)
        for i, target in enumerate(spec.targets):
            for dest in [Path(tmp) / "heads" / target] + ([Path(tmp)] if i == 0 else []):
                dest.mkdir(parents=True, exist_ok=True)
                for name in HEAD_FILES:
                    shutil.copyfile(store.path(target) / name, dest / name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def predict_unsorted(model, enc, batch_size: int) -> dict[int, int]:
    """``trainables.evaluate.predict`` with its batches in file order (not sorted by length)."""
    import torch

    from trainables.data import iter_batches

    device = next(model.parameters()).device
    preds: dict[int, int] = {}
    with torch.inference_mode():
        for rows, batch in iter_batches(enc, batch_size, sort_by_length=False):
            logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits
            preds.update(zip(rows, logits.argmax(dim=-1).tolist()))
    return preds


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def derived_config(base: Path, name: str, **search) -> Path:
    """A copy of the config at ``base`` under another name, with ``search`` keys replaced."""
    config = yaml.safe_load(base.read_text(encoding="utf-8"))
    config["name"] = name
    config["search"].update(search)
    path = base.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Search:
    """One ``run_search_with`` and its MLflow child runs."""

    def __init__(self, cfg, **kwargs) -> None:
        from search.workflows.mixture_search import run_search_with
        from tests_support import mlflow_runs

        self.cfg = cfg
        self.summary = run_search_with(cfg, **kwargs)
        self.children = mlflow_runs(cfg, f"tags.`mlflow.parentRunId` = '{self.summary.parent_run_id}'")
        self.evaluated = [r for r in self.children if r.data.tags.get("signmix.status") == "evaluated"]

    @property
    def seconds(self) -> float:
        return self.summary.seconds

    def total(self, metric: str, runs=None) -> float:
        return sum(r.data.metrics.get(metric, 0.0) for r in (self.children if runs is None else runs))

    def mean(self, metric: str) -> float:
        return self.total(metric, self.evaluated) / max(1, len(self.evaluated))

    @property
    def examples(self) -> int:
        return int(self.total("examples"))

    @property
    def eps(self) -> float:
        return self.examples / self.seconds

    def seconds_per_trial(self) -> float:
        """Wall time x CPUs per trial: what one trial occupies a core for, scheduling included."""
        return self.seconds * CPUS / max(1, len(self.children))

    def accuracies(self) -> dict[str, float]:
        """accuracy_mean of each evaluated mixture, by its members."""
        return {r.data.params["members"]: r.data.metrics["accuracy_mean"] for r in self.evaluated}


def best_of(acc: Mapping[str, float]) -> tuple[str, set[str]]:
    """The best mixture (highest accuracy, then fewest members, then name) and all tied at the top."""
    top = max(acc.values())
    best = min((m for m, a in acc.items() if a == top), key=lambda m: (m.count(","), m))
    return best, {m for m, a in acc.items() if a == top}


def same_best(best: str, reference: str, tied: set[str]) -> str:
    if best == reference:
        return "same best"
    return "tied with the best" if best in tied else "NOT the same best"


def timed(fn, repeat: int) -> float:
    """Mean seconds of ``repeat`` calls of ``fn``."""
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def line(label: str, before: float, after: float, unit: str, higher_is_better: bool = False) -> str:
    speed = (after / before) if higher_is_better else (before / after)
    shown = f"{speed:,.0f}" if speed >= 100 else f"{speed:.2f}"
    return f"  {label:<44} {before:>12.4g} {after:>12.4g}  {unit:<22} {shown:>8}x"


# --------------------------------------------------------------------------------------------
# Part 2 micro-benchmarks
# --------------------------------------------------------------------------------------------

def fetch_costs(weights: Mapping, store_root: str, member_sets: list[list[str]],
                repeat: int) -> tuple[float, float, float]:
    """Seconds per trial, inside a Ray task (a worker): member adapters read from disk
    (safetensors); the first version's object store path (``ray.get`` of one dict of
    every adapter's torch tensors, unpickled into a private copy); and signmix's path
    (one object per adapter as numpy arrays, only the members fetched, zero-copy:
    ``trainables.mixture_trial.share_adapter_weights`` / ``fetch_members``)."""
    import ray

    from trainables.mixture_trial import share_adapter_weights

    holder = [ray.put(dict(weights)), share_adapter_weights(weights)]

    @ray.remote(num_cpus=1)
    def worker(holder, store_root, member_sets, repeat):
        import time

        import ray

        from trainables.mixture_trial import fetch_members
        from trainables.store import AdapterStore

        store = AdapterStore(store_root)
        ray.get(holder[0])  # warm the worker (imports, first connection), as a running trial is
        fetch_members(holder[1], list(holder[1]))
        disk = whole = members_only = 0.0
        for _ in range(repeat):
            for members in member_sets:
                t0 = time.perf_counter()
                got = {m: store.load_weights(m) for m in members}
                disk += time.perf_counter() - t0
                t0 = time.perf_counter()
                every = ray.get(holder[0])
                got = {m: every[m] for m in members}
                whole += time.perf_counter() - t0
                t0 = time.perf_counter()
                got = fetch_members(holder[1], members)
                members_only += time.perf_counter() - t0
        del got
        n = repeat * len(member_sets)
        return disk / n, whole / n, members_only / n

    return ray.get(worker.remote(holder, store_root, member_sets, repeat))


def mixture_build_costs(mm, weights: Mapping, store, specs, repeat: int) -> tuple[float, float]:
    """Seconds per mixture on one loaded model: load_adapter x k + average_adapter + activate +
    delete_adapter (before) vs build_mixture + MixtureModel.set_weights (after)."""
    from trainables.mix_and_prune import build_mixture
    from trainables.store import ADAPTER_NAME

    model = mm.model

    def before(spec):
        for m in spec.members:
            model.load_adapter(str(store.path(m)), load_as=f"b_{m}", with_head=False, use_safetensors=True)
        model.average_adapter("b_mix", [f"b_{m}" for m in spec.members], weights=list(spec.weights))
        model.set_active_adapters("b_mix")
        model.set_active_adapters(ADAPTER_NAME)  # the next trial's state: only the slot
        for name in ["b_mix", *(f"b_{m}" for m in spec.members)]:
            model.delete_adapter(name)

    def after(spec):
        mm.set_weights(build_mixture({m: weights[m] for m in spec.members}, spec))

    b = a = 0.0
    for _ in range(repeat):
        for spec in specs:
            t0 = time.perf_counter()
            before(spec)
            b += time.perf_counter() - t0
            t0 = time.perf_counter()
            after(spec)
            a += time.perf_counter() - t0
    n = repeat * len(specs)
    return b / n, a / n


def tokenisation_costs(experiment: Mapping, label_names, repeat: int) -> tuple[float, float]:
    """Seconds to get the target's encoded validation split: load + tokenise (cache cleared)
    vs the per-process cache hit of ``encoded_split``."""
    from trainables import evaluate

    def cold():
        evaluate._ENCODED.clear()
        evaluate.encoded_split(experiment, "books", "validation", label_names)

    cold_s = timed(cold, repeat)
    hit_s = timed(lambda: evaluate.encoded_split(experiment, "books", "validation", label_names), 100)
    return cold_s, hit_s


# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench"), help="cache of data, adapters and runs")
    parser.add_argument("--quick", action="store_true", help="a few mixtures per part: checks that it runs")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    quick = args.quick
    n_mix = 4 if quick else 32            # mixtures of the end-to-end, ASHA and bf16 searches
    n_reuse = 4 if quick else 8           # mixtures of each actor-reuse search
    n_naive = 2 if quick else 8           # mixtures of the naive loop (a rate per example)
    rounds = 1 if quick else 2            # passes of the predict micro-benchmarks
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("adapters").setLevel(logging.ERROR)
    import torch

    from search.runtime.cluster import connect_ray
    from search.settings.config import load_config
    from search.workflows.adapter_training import run_training
    from trainables.store import load_sign_index
    from spaces.space import space_from_config
    from trainables.evaluate import mixture_model, predict
    from trainables.store import AdapterStore

    wall = time.perf_counter()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = write_config(work, strategy="exhaustive", max_fsd=None, name="opt-base")
    cfg = {
        "after": load_config(derived_config(base, "opt-after", num_mixtures=n_mix)),
        "before": load_config(derived_config(base, "opt-before", num_mixtures=n_mix)),
        "reuse_off": load_config(derived_config(base, "opt-reuse-off", num_mixtures=n_reuse)),
        "reuse_on": load_config(derived_config(base, "opt-reuse-on", num_mixtures=n_reuse)),
        "asha": load_config(derived_config(base, "opt-asha", num_mixtures=n_mix, eval_chunks=4, early_stopping=True)),
        "bf16": load_config(derived_config(base, "opt-bf16", num_mixtures=n_mix, eval_dtype="bfloat16")),
    }
    after_cfg = cfg["after"]
    run_training(after_cfg)  # cached in --work: every config shares the store and its fingerprints
    connect_ray(after_cfg)   # the cluster's start is not part of any search's time
    mode = " (--quick: numbers mean little)" if quick else ""
    print(f"\nIssue 5: optimisations before and after{mode}; MiniLM-L6, batch {BATCH}, max_length {MAX_LENGTH}, "
          f"{EVAL_N} validation examples per mixture, {CPUS} CPUs")

    # ---------------------------------------------------------------- part 1: end to end
    after = Search(after_cfg)
    before = Search(cfg["before"], trial=before_trial, reuse_actors=False)
    raw_eps = raw_forward_eps(after_cfg, (1 if quick else 3) * EVAL_N)
    members = sorted((sorted(r.data.params["members"].split(",")) for r in after.evaluated), key=len)
    step = max(1, len(members) // n_naive)
    naive_members = members[::step][:n_naive]   # every k represented
    naive_s, naive_examples, _ = naive_loop(after_cfg, naive_members)
    naive_eps = naive_examples / naive_s

    print(f"\nPart 1: end to end, {n_mix} mixtures (exhaustive search through run_search)")
    print(f"  {'':<34} {'before':>12} {'after':>12}")
    print(f"  {'signmix search, examples/s':<34} {before.eps:>12.1f} {after.eps:>12.1f}   "
          f"({before.examples} in {before.seconds:.1f} s / {after.examples} in {after.seconds:.1f} s)")
    print(f"  {'raw forward loop, examples/s':<34} {raw_eps:>12.1f} {raw_eps:>12.1f}")
    print(f"  {'naive loop, examples/s':<34} {naive_eps:>12.1f} {naive_eps:>12.1f}   "
          f"({n_naive} mixtures, {naive_s:.1f} s)")
    print(f"  {'benchmark 1: search / raw':<34} {before.eps / raw_eps:>12.3f} {after.eps / raw_eps:>12.3f}   "
          f"(goal >= 0.85)")
    print(f"  {'benchmark 2: search / naive':<34} {before.eps / naive_eps:>12.2f} {after.eps / naive_eps:>12.2f}   "
          f"(per example; goal >= 1.0)")
    print(f"  {'speed-up of the search':<34} {'':>12} {after.eps / before.eps:>11.2f}x")
    print("  seconds per trial:")
    for label, metric in (("model + data setup", "setup_seconds"), ("building the mixture", "build_seconds"),
                          ("evaluation (forward passes)", "predict_seconds"), ("whole trial function", "eval_seconds")):
        print(f"    {label:<32} {before.mean(metric):>12.3f} {after.mean(metric):>12.3f}")
    print(f"    {'wall x CPUs per trial':<32} {before.seconds_per_trial():>12.3f} {after.seconds_per_trial():>12.3f}"
          "   (the rest: Ray scheduling, actor start, checkpoint, MLflow)")
    acc_before, acc_after = before.accuracies(), after.accuracies()
    common = sorted(set(acc_before) & set(acc_after))
    diff = max((abs(acc_before[m] - acc_after[m]) for m in common), default=float("nan"))
    print(f"  same accuracies: max |before - after| over {len(common)} mixtures = {diff:.4f}"
          " (unsorted padding can move a borderline prediction)")
    _check_export(before)

    # ---------------------------------------------------------------- part 2: per optimisation
    rows: list[str] = []
    notes: list[str] = []

    # Actor reuse: the real trial, reuse_actors False vs True.
    off = Search(cfg["reuse_off"], reuse_actors=False)
    on = Search(cfg["reuse_on"], reuse_actors=True)
    rows.append(line("actor reuse: wall x CPUs per trial", off.seconds_per_trial(), on.seconds_per_trial(),
                     "s/trial"))
    rows.append(line("actor reuse: setup per trial", off.mean("setup_seconds"), on.mean("setup_seconds"), "s/trial"))
    notes.append(f"actor reuse: {n_reuse} mixtures each, real trial; a fresh actor also pays a new worker "
                 f"process (imports), outside setup_seconds: {off.seconds:.1f} s vs {on.seconds:.1f} s in all")

    # ASHA over 4 validation chunks vs one chunk (the part-1 search).
    asha = Search(cfg["asha"])
    best_after, tied_after = best_of(acc_after)
    best_asha, _ = best_of(asha.accuracies()) if asha.evaluated else ("-", set())
    asha_status = {r.data.params["members"]: (r.data.tags.get("signmix.status"),
                                              r.data.metrics.get("evaluated_fraction")) for r in asha.children}
    status, fraction = asha_status.get(best_after, ("not tried", None))
    rows.append(line("ASHA (4 chunks): examples evaluated", after.examples, asha.examples, "examples"))
    rows.append(line("ASHA (4 chunks): search seconds", after.seconds, asha.seconds, "s"))
    notes.append(f"ASHA: {len(asha.children)} mixtures tried, {asha.summary.stopped_early} stopped early, "
                 f"{len(asha.evaluated)} fully evaluated; best {best_asha} "
                 f"({asha.accuracies().get(best_asha, float('nan')):.4f}) vs {best_after} ({acc_after[best_after]:.4f})"
                 f" without: {same_best(best_asha, best_after, tied_after)}"
                 f" (under ASHA, {best_after} was {status}"
                 + (f" after {fraction:.0%} of its examples)" if status == "stopped_early" and fraction else ")"))

    # bfloat16: the whole search, accuracy and ranking vs float32 (the part-1 search).
    bf16 = Search(cfg["bf16"])
    acc_bf16 = bf16.accuracies()
    common = sorted(set(acc_bf16) & set(acc_after))
    deltas = [abs(acc_bf16[m] - acc_after[m]) for m in common]
    rho = float("nan")
    if len(common) > 2:
        from scipy.stats import spearmanr

        rho = float(spearmanr([acc_after[m] for m in common], [acc_bf16[m] for m in common]).statistic)
    best_bf16, _ = best_of(acc_bf16)
    rows.append(line("bf16: search examples/s", after.eps, bf16.eps, "examples/s", higher_is_better=True))
    notes.append(f"bf16 over {len(common)} mixtures: accuracy_mean {statistics.mean(acc_after[m] for m in common):.4f}"
                 f" (fp32) vs {statistics.mean(acc_bf16[m] for m in common):.4f} (bf16); |delta accuracy| mean "
                 f"{statistics.mean(deltas):.4f}, max {max(deltas):.4f}; Spearman rho of the rankings {rho:.3f}; "
                 f"best {best_bf16} ({acc_bf16[best_bf16]:.4f}) vs fp32 {best_after} ({acc_after[best_after]:.4f}): "
                 f"{same_best(best_bf16, best_after, tied_after)}")

    # Object store vs disk, inside a Ray worker.
    weights, index = load_sign_index(after_cfg.store_path, after_cfg.domains)
    space = space_from_config(after_cfg.search.model_dump(), sorted(after_cfg.domains), index)
    specs = [space.to_mixture_spec(p) for p in space.enumerate()][: (4 if quick else None)]
    member_sets = [list(s.members) for s in specs]
    disk_s, whole_s, obj_s = fetch_costs(weights, os.path.abspath(after_cfg.store_path), member_sets,
                                         1 if quick else 3)
    rows.append(line("object store vs disk: adapter weights", disk_s * 1e3, obj_s * 1e3, "ms/trial"))
    n_tensors = sum(len(w) for w in weights.values())
    notes.append(f"object store: in a Ray worker, {len(member_sets)} mixtures' members (mean k "
                 f"{statistics.mean(len(m) for m in member_sets):.1f}) read from safetensors files (page cache warm) "
                 f"vs fetched from the object store as signmix does (one numpy object per adapter, members only, "
                 f"zero-copy); the first version's ray.get of all {len(weights)} adapters as {n_tensors} torch "
                 f"tensors (unpickled into a copy): {whole_s * 1e3:.2f} ms/trial")

    # In place vs add/average/delete, on one loaded model (1 thread, as a trial).
    torch.set_num_threads(1)
    experiment = after_cfg.model_dump()
    store = AdapterStore(after_cfg.store_path)
    mm = mixture_model(experiment, os.path.abspath(after_cfg.store_path))
    add_s, inplace_s = mixture_build_costs(mm, weights, store, specs, 1 if quick else 2)
    rows.append(line("in place vs add/average/delete", add_s * 1e3, inplace_s * 1e3, "ms/mixture"))

    # Tokenisation cache.
    label_names = store.meta("books")["label_names"]
    cold_s, hit_s = tokenisation_costs(experiment, label_names, 2 if quick else 5)
    rows.append(line("tokenisation cache: validation split", cold_s * 1e3, hit_s * 1e3, "ms/trial/target"))

    # Length-sorted batches, and bfloat16, on the same model and examples (1 thread, as a trial).
    from trainables.evaluate import encoded_split

    mm.use_head("books")
    enc = encoded_split(experiment, "books", "validation", label_names)
    mm16 = mixture_model({**experiment, "search": {**experiment["search"], "eval_dtype": "bfloat16"}},
                         os.path.abspath(after_cfg.store_path))
    mm16.use_head("books")
    soup = max(specs, key=lambda s: s.k)
    from trainables.mix_and_prune import build_mixture

    mixed = build_mixture({m: weights[m] for m in soup.members}, soup)
    mm.set_weights(mixed)
    mm16.set_weights(mixed)
    passes = {"unsorted": 0.0, "sorted": 0.0, "bf16": 0.0}
    predict(mm.model, enc, BATCH)  # warm-up
    predict(mm16.model, enc, BATCH)
    for _ in range(rounds):
        passes["unsorted"] += timed(lambda: predict_unsorted(mm.model, enc, BATCH), 1)
        passes["sorted"] += timed(lambda: predict(mm.model, enc, BATCH), 1)
        passes["bf16"] += timed(lambda: predict(mm16.model, enc, BATCH), 1)
    eps = {k: rounds * len(enc) / v for k, v in passes.items()}
    rows.append(line("length-sorted batches: predict", eps["unsorted"], eps["sorted"], "examples/s",
                     higher_is_better=True))
    rows.append(line("bf16: predict", eps["sorted"], eps["bf16"], "examples/s", higher_is_better=True))
    p32, p16 = predict(mm.model, enc, BATCH), predict(mm16.model, enc, BATCH)
    from trainables.data import iter_batches

    padded = {s: sum(b["input_ids"].numel() for _, b in iter_batches(enc, BATCH, sort_by_length=s))
              for s in (False, True)}
    notes.append(f"predict: 1 thread, {len(enc)} examples, {rounds} pass(es) each, mixture {soup.label()}; "
                 f"token positions computed: {padded[False]} unsorted vs {padded[True]} sorted "
                 f"({sum(len(x) for x in enc.input_ids)} real tokens); "
                 f"bf16 changes {sum(p32[i] != p16[i] for i in p32)} of {len(p32)} predictions")
    torch.set_num_threads(CPUS)

    # Sign bits vs int8 signs: one pre-filter decision (any_conflict, 8 members of 64 adapters).
    from bench_fsd import bench as fsd_bench

    p = 1_000_000 if quick else 10_000_000
    r = fsd_bench(64, p, int8=True)
    rows.append(line(f"sign bits: decision, 64 x {p:,}", r["int8_decision_ms"], r["decision_ms"], "ms/decision"))
    rows.append(line(f"sign bits: sign memory, 64 x {p:,}", r["int8_mib"], r["signs_mib"], "MiB"))

    print("\nPart 2: per optimisation, before and after (speed-up: before/after for times and sizes, "
          "after/before for rates)")
    print(f"  {'optimisation':<44} {'before':>12} {'after':>12}  {'unit':<22} {'speed-up':>9}")
    for row in rows:
        print(row)
    for note in notes:
        print(f"  - {note}")
    print(f"\n(whole run {time.perf_counter() - wall:.0f} s)")
    return 0


def _check_export(search: Search) -> None:
    """The before trial keeps the contract: its best mixture exports and re-evaluates like a signmix one."""
    import tempfile

    from search.workflows.export import evaluate_export, export_mixture

    best, _ = best_of(search.accuracies())
    run = next(r for r in search.evaluated if r.data.params["members"] == best)
    with tempfile.TemporaryDirectory() as tmp:
        out, _ = export_mixture(search.cfg, Path(tmp) / "export", run_id=run.info.run_id, register=False)
        again = evaluate_export(out)["metrics"]["accuracy_mean"]
    print(f"  contract: the before trial's best mixture ({best}) exports; signmix evaluate gives "
          f"{again:.4f} (logged {run.data.metrics['accuracy_mean']:.4f})")


if __name__ == "__main__":
    sys.exit(main())
