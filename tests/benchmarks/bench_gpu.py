"""Benchmark 1 on a GPU: a real signmix search with fractional-GPU trials against one raw forward loop.

Setup (built in ``--work``): a BERT-base-sized encoder (hidden 768, 12 layers, 12 heads)
with *random* weights, saved with ``save_pretrained`` beside the MiniLM tokenizer (throughput
does not depend on pretraining); the demo's generated domains (``write_demo_domains``) with
``--eval-n`` validation examples each; one ``seq_bn`` adapter per domain trained by signmix
itself on the GPU (``run_training``, one epoch).

1. *signmix search*: ``run_search`` with the exhaustive strategy over every mixture that
   contains ``books`` (16 subsets x the prune ratios), Ray Tune trials with
   ``resources: {cpu: 2, gpu: 0.25}`` and ``max_concurrent: 4`` (four trials share the GPU),
   MLflow tracking in SQLite, Optuna behind the strategy. Examples per second = evaluated
   examples / the search's wall time. ``--slots 4:0.25,2:0.5,1:1`` runs one search per
   (max_concurrent, resources.gpu) pair, to compare sharing the GPU with one trial at a time.
2. *raw forward loop*: one process, the same model with the books adapter on the GPU, the
   same examples, batch size and max length, plain ``torch.inference_mode()`` forward passes
   (batches copied to the GPU inside the loop, one synchronisation at the end).

GPU utilisation and memory are sampled with NVML (``nvidia-ml-py``) every 0.2 s in a thread
during each phase. Not collected by pytest. Run on a machine with a GPU:
``python tests/benchmarks/bench_gpu.py --work /tmp/bench-gpu --tokenizer DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BATCH, MAX_LENGTH, CPUS_PER_TRIAL = 64, 128, 2
SLOTS = [(4, 0.25)]  # (max_concurrent, resources.gpu) of each search; --slots 4:0.25,1:1
DEVICE = "cuda"  # --cpu-smoke: "cpu"
TARGET = "books"


class GpuSampler:
    """Samples GPU utilisation and memory every ``period`` seconds, filed under the current phase."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.phase = period, None
        self.samples: dict[str, list[tuple[float, float, int]]] = {}
        self.pids: dict[str, set[int]] = {}
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # noqa: BLE001 - fall back to nvidia-smi
            print(f"  (NVML unavailable: {exc}; sampling nvidia-smi)")
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> tuple[float, float, set[int]]:
        if self._nvml is not None:
            nv = self._nvml
            util = nv.nvmlDeviceGetUtilizationRates(self._handle).gpu
            mem = nv.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            try:
                pids = {p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(self._handle)}
            except nv.NVMLError:
                pids = set()
            return float(util), float(mem), pids
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout.split(",")
        return float(out[0]), float(out[1]), set()

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            if phase is not None:
                try:
                    util, mem, pids = self._read()
                except Exception:  # noqa: BLE001
                    util, mem, pids = float("nan"), float("nan"), set()
                self.samples.setdefault(phase, []).append((time.perf_counter(), util, mem))
                self.pids.setdefault(phase, set()).update(pids)
            self._stop.wait(self.period)

    def summary(self, phase: str) -> str:
        s = self.samples.get(phase, [])
        if not s:
            return "no samples"
        utils, mems = [u for _, u, _ in s], [m for _, _, m in s]
        busy = sum(u > 0 for u in utils) / len(utils)
        return (f"utilisation mean {sum(utils) / len(utils):5.1f} %  (samples with a kernel running: {100 * busy:4.0f} %), "
                f"memory used mean {sum(mems) / len(mems) / 1024:5.2f} GiB, peak {max(mems) / 1024:5.2f} GiB, "
                f"{len(s)} samples, {len(self.pids.get(phase, ()))} processes on the GPU")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:  # noqa: BLE001
        return "?"


def build_base_model(work: Path, tokenizer_dir: str, tiny: bool = False) -> str:
    """A BERT-base-sized encoder with random weights and the MiniLM tokenizer, as a local folder
    (``tiny``: 2 layers, 32 wide, to check this script on a CPU)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = work / ("bert-tiny-random" if tiny else "bert-base-random")
    if not (path / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else \
            dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        config = BertConfig(vocab_size=len(tok), max_position_embeddings=512, **size)
        BertModel(config).save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def write_config(work: Path, base_model: str, *, eval_n: int, n_train: int, dtype: str, prune_ratios,
                 concurrent: int, gpu: float) -> Path:
    from search.cli.demo_data import write_demo_domains

    demo = write_demo_domains(work / "demo-data", seed=0, n_train=n_train, n_validation=eval_n, n_test=20)
    config = {
        "name": f"bench-gpu-{dtype}-c{concurrent}", "base_model": base_model,
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 16, "max_length": MAX_LENGTH, "seed": 0,
                     "max_train_examples": n_train, "max_eval_examples": eval_n},
        "domains": {d: {"path": str(p)} for d, p in demo.items()},
        "search": {"strategy": "exhaustive", "targets": [TARGET], "num_mixtures": 16 * len(prune_ratios),
                   "prune_ratios": list(prune_ratios), "max_fsd": None, "max_concurrent": concurrent,
                   "eval_batch_size": BATCH, "eval_dtype": dtype, "seed": 0},
        "resources": {"cpu": CPUS_PER_TRIAL, "gpu": gpu},
        "ray": {"storage_path": str(work / "runs")},
        "store": str(work / "adapters"),
    }
    path = work / f"bench-gpu-{dtype}-c{concurrent}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def raw_forward_eps(cfg, n_examples: int, dtype: str, sort_by_length: bool) -> tuple[float, int, float]:
    """(examples/s, examples, seconds) of one plain inference loop on the GPU: the base model
    and the books adapter, the books validation examples, the search's batch size and max length."""
    import torch

    from trainables.data import encode_split, iter_batches, load_domain
    from trainables.evaluate import cast_model
    from trainables.model import load_encoder

    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    model, tok = load_encoder(cfg.base_model)
    name = model.load_adapter(str(Path(cfg.store_path) / TARGET), use_safetensors=True)
    model.set_active_adapters(name)
    cast_model(model, dtype, DEVICE)
    model.eval()
    data = load_domain(TARGET, cfg.domains[TARGET].model_dump(), splits=("validation",),
                       max_eval_examples=cfg.training.max_eval_examples)
    enc = encode_split(tok, data.splits["validation"], MAX_LENGTH)
    batches = [{k: v for k, v in b.items() if k != "labels"}
               for _, b in iter_batches(enc, BATCH, sort_by_length=sort_by_length)]
    with torch.inference_mode():
        for batch in batches:  # warm-up: cuBLAS handles, allocator
            model(**{k: v.to(DEVICE) for k, v in batch.items()})
        sync()
        done, started = 0, time.perf_counter()
        while done < n_examples:
            for batch in batches:
                model(**{k: v.to(DEVICE) for k, v in batch.items()})
                done += len(batch["input_ids"])
        sync()
    seconds = time.perf_counter() - started
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return done / seconds, done, seconds


def bench(cfg, sampler: GpuSampler, dtype: str, raw: dict) -> None:
    """One search of ``cfg``; the raw loops of ``dtype`` are measured once, after its first search."""
    from search.workflows.mixture_search import run_search
    from tests_support import mlflow_runs

    concurrent, gpu = cfg.search.max_concurrent, cfg.resources.gpu
    phase = f"search-{dtype}-c{concurrent}"
    sampler.phase = phase
    s = run_search(cfg)
    sampler.phase = None
    children = mlflow_runs(cfg, f"tags.`mlflow.parentRunId` = '{s.parent_run_id}'")
    evaluated = [r for r in children if r.data.tags.get("signmix.status") == "evaluated"]
    examples = int(sum(r.data.metrics.get("examples", 0) for r in evaluated))
    signmix_eps = examples / s.seconds
    if dtype not in raw:
        sampler.phase = f"raw-{dtype}"
        unsorted = raw_forward_eps(cfg, examples, dtype, sort_by_length=False)
        sampler.phase = f"raw-sorted-{dtype}"
        raw[dtype] = (unsorted, raw_forward_eps(cfg, examples, dtype, sort_by_length=True))
        sampler.phase = None
    (raw_eps, raw_n, raw_s), (sorted_eps, sorted_n, sorted_s) = raw[dtype]

    m = lambda k: sum(r.data.metrics.get(k, 0.0) for r in evaluated)  # noqa: E731
    n = len(evaluated)
    trial_total = m("eval_seconds")
    eval_n = cfg.training.max_eval_examples
    print(f"\nBenchmark 1 on the GPU ({dtype}): {n} mixtures x {eval_n} examples ({TARGET}, demo data), "
          f"BERT-base-sized random encoder, seq_bn/16, batch {BATCH}, max_length {MAX_LENGTH}")
    print(f"  trials: resources {{cpu: {CPUS_PER_TRIAL}, gpu: {gpu:g}}}, max_concurrent {concurrent}; "
          f"{s.evaluated} evaluated, {s.failed} failed, best {s.best_label} ({s.best_accuracy})")
    print(f"  signmix search              {signmix_eps:9.1f} examples/s  ({examples} examples in {s.seconds:.1f} s)")
    print(f"  raw forward loop            {raw_eps:9.1f} examples/s  ({raw_n} examples in {raw_s:.1f} s; "
          "unsorted batches, as benchmark 1 on the CPU)")
    print(f"  raw forward loop, sorted    {sorted_eps:9.1f} examples/s  ({sorted_n} examples in {sorted_s:.1f} s; "
          "batches sorted by length, as predict() does)")
    print(f"  ratio signmix / raw         {signmix_eps / raw_eps:9.3f}")
    print(f"  ratio signmix / raw sorted  {signmix_eps / sorted_eps:9.3f}")
    print(f"  in-trial forward throughput {examples / max(m('predict_seconds'), 1e-9):9.1f} examples/s per trial "
          f"(examples / predict seconds, {concurrent} trials at once)")
    print("  GPU (NVML, every 0.2 s):")
    for name in (phase, f"raw-{dtype}", f"raw-sorted-{dtype}"):
        print(f"    {name:21s} {sampler.summary(name)}")
    print("  where a search's time goes (seconds per trial):")
    print(f"    model + data setup (first trial of a worker)  {m('setup_seconds') / n:7.3f}")
    print(f"    building the mixture (average, prune)          {m('build_seconds') / n:7.3f}")
    print(f"    evaluation (forward passes)                    {m('predict_seconds') / n:7.3f}")
    rest = trial_total - m("setup_seconds") - m("build_seconds") - m("predict_seconds")
    print(f"    rest of the trial (checkpoint, reporting)      {rest / n:7.3f}")
    print(f"    whole trial (eval_seconds)                     {trial_total / n:7.3f}")
    print(f"    scheduling (Ray, outside the trials)           {(s.seconds * concurrent - trial_total) / n:7.3f}"
          f"   (search seconds x {concurrent} slots - trial seconds)")
    print(f"    pre-filter and FSD (driver)                    {s.prefilter_seconds / n:7.3f}")
    print(f"    MLflow logging (driver)                        {s.mlflow_seconds / n:7.3f}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "gpu"), help="data, model, adapters and runs")
    parser.add_argument("--tokenizer", required=True, help="a folder with the MiniLM tokenizer files")
    parser.add_argument("--eval-n", type=int, default=4000, help="validation examples per domain")
    parser.add_argument("--n-train", type=int, default=400, help="training examples per domain")
    parser.add_argument("--dtypes", default="float32", help="comma-separated eval dtypes, e.g. float32,bfloat16")
    parser.add_argument("--prune-ratios", default="0.0,0.5", help="16 mixtures per ratio")
    parser.add_argument("--slots", default="4:0.25",
                        help="searches to run, each max_concurrent:resources.gpu, e.g. 4:0.25,2:0.5,1:1")
    parser.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU: tiny model, no GPU")
    args = parser.parse_args(argv)
    global DEVICE
    slots = [(int(c), float(g)) for c, g in (x.split(":") for x in args.slots.split(","))]
    if args.cpu_smoke:
        slots, DEVICE = [(c, 0.0) for c, _ in slots], "cpu"
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("adapters").setLevel(logging.ERROR)
    import ray
    import torch
    import transformers

    from search.runtime.cluster import connect_ray
    from search.settings.config import load_config
    from search.workflows.adapter_training import run_training

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
              f"driver {driver_version()}")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
          f"transformers {transformers.__version__}, ray {ray.__version__}; {os.cpu_count()} CPUs")
    print("the encoder's weights are random: throughput does not depend on pretraining")

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = build_base_model(work, args.tokenizer, tiny=args.cpu_smoke)
    ratios = [float(r) for r in args.prune_ratios.split(",")]
    dtypes = args.dtypes.split(",")
    cfgs = [(d, load_config(write_config(work, base, eval_n=args.eval_n, n_train=args.n_train, dtype=d,
                                         prune_ratios=ratios, concurrent=c, gpu=g)))
            for d in dtypes for c, g in slots]
    sampler = GpuSampler(0.2)
    first = cfgs[0][1]  # its resources train the adapters too
    connect_ray(first)  # a local cluster: num_gpus autodetected
    print(f"Ray cluster resources: { {k: v for k, v in ray.cluster_resources().items() if '/' not in k and 'node:' not in k} }")
    sampler.phase = "training"
    started = time.perf_counter()
    t = run_training(first)
    sampler.phase = None
    print(f"training: {len(t.trained)} adapters trained on the GPU in "
          f"{time.perf_counter() - started:.1f} s ({args.n_train} examples each, 1 epoch, "
          f"{{cpu: {CPUS_PER_TRIAL}, gpu: {first.resources.gpu:g}}} per trial); failed: {t.failed}")
    print(f"    training           {sampler.summary('training')}")
    raw: dict = {}
    for dtype, cfg in cfgs:
        bench(cfg, sampler, dtype, raw)
    sampler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
