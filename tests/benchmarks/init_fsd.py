"""Calibrate the "members did not share one initialisation" detector: FSD of adapters trained
from one initialisation versus from independent ones, on real review data with MiniLM-L6.

For each adapter method (``seq_bn``; ``lora`` measured on ΔW = B·A·alpha/r and, for
contrast, on its factors), adapters are trained for a few steps on two domains with two
initialisation seeds. Pairs:

- ``init, other seed``: the two initialisations before any training (LoRA's ΔW is 0 at init);
- ``shared init, other domain``: what signmix's own store holds (one seed, several domains);
- ``other init, same domain`` and ``other init, other domain``: independently initialised.

LoRA is also measured on its ``lora_A`` factors alone (:func:`trainables.imports.initialisation_weights`):
``B`` starts at 0 and ΔW = B·A takes the signs the data gives B, so neither ΔW nor all
factors keep a trace of the initialisation, while ``A`` does.

Run (a few minutes on 2 CPUs)::

    .venv/bin/python tests/benchmarks/init_fsd.py --steps 60

The numbers it printed for the threshold in ``trainables/architecture.py`` are in the
docstring there and in the helper's report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "amazon_multidomain"


def train(method: str, domain: str, seed: int, steps: int, *, batch_size: int, max_length: int, base: str):
    """Returns (weights at init, weights after ``steps`` steps) of one adapter, as dicts of tensors."""
    import torch

    from trainables.data import encode_split, load_domain, shuffled_batches
    from trainables.model import adapter_config_for, load_encoder
    from trainables.store import ADAPTER_NAME

    settings = {"method": method, "reduction_factor": 16, "rank": 8, "alpha": 8.0}
    data = load_domain(domain, {"path": str(DATA / domain)}, splits=("train",), max_train_examples=steps * batch_size,
                       seed=0)
    model, tokenizer = load_encoder(base)
    encoded = encode_split(tokenizer, data.splits["train"], max_length)
    torch.manual_seed(seed)  # the initialisation: adapter and head
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(settings))
    model.add_classification_head(ADAPTER_NAME, num_labels=data.num_labels)
    model.train_adapter(ADAPTER_NAME)

    def snapshot():
        return {k: v.detach().clone() for k, v in model.named_parameters()
                if f".{ADAPTER_NAME}." in k and not k.startswith("heads.")}  # the adapter, not its head

    initial = snapshot()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    done = 0
    while done < steps:
        for _, batch in shuffled_batches(encoded, batch_size, seed=0, epoch=done):
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    return initial, snapshot()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--domains", nargs=2, default=["books", "dvd"])
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["seq_bn", "lora"])
    args = parser.parse_args()

    import torch

    from search.cli.demo import demo_base_model
    from spaces.fsd import fraction_sign_difference
    from trainables.imports import initialisation_weights
    from trainables.lora import lora_delta_weights

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base = demo_base_model()
    rows = []
    for method in args.methods:
        started = time.perf_counter()
        runs = {(d, s): train(method, d, s, args.steps, batch_size=args.batch_size, max_length=args.max_length,
                              base=base) for d in args.domains for s in args.seeds}
        seconds = time.perf_counter() - started
        views = {"weights": lambda w: w}
        if method == "lora":
            views = {"ΔW": lambda w: lora_delta_weights(w, scaling=8.0 / 8), "factors": lambda w: w,
                     "A only": initialisation_weights}
        d0, d1 = args.domains
        s0, s1 = args.seeds
        pairs = {"init, other seed": ((d0, s0), (d0, s1), 0),
                 "shared init, other domain": ((d0, s0), (d1, s0), 1),
                 "other init, same domain": ((d0, s0), (d0, s1), 1),
                 "other init, other domain": ((d0, s0), (d1, s1), 1)}
        for view, fn in views.items():
            for pair, (a, b, which) in pairs.items():
                wa, wb = fn(runs[a][which]), fn(runs[b][which])
                if all(float(t.abs().sum()) == 0 for t in wa.values()):
                    fsd = float("nan")  # LoRA's ΔW is exactly 0 at init: no signs to compare
                else:
                    fsd = fraction_sign_difference(wa, wb)
                rows.append((method, view, pair, fsd))
        print(f"# {method}: {len(runs)} adapters x {args.steps} steps in {seconds:.0f} s", flush=True)
    print(f"\n{'method':8} {'view':8} {'pair':28} FSD")
    for method, view, pair, fsd in rows:
        print(f"{method:8} {view:8} {pair:28} {fsd:.4f}")
    detector = ("weights", "A only")  # what shared_initialisation_check is meant to read
    shared = [f for m, v, p, f in rows if p.startswith("shared") and v in detector]
    other = [f for m, v, p, f in rows if p.startswith("other init") and v in detector]
    print(f"\nshared init max {max(shared):.4f}; independent init min {min(other):.4f}")


if __name__ == "__main__":
    main()
