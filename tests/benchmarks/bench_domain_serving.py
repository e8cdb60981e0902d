"""What serving a domain with its mask or rescaler costs: milliseconds and bytes (issue 29, README "The bundle").

MiniLM-L6 with one ``seq_bn`` adapter (reduction 16, as the real benchmarks train), random deltas from its
initialisation for 16 domains, a TIES-free EMR body; measures on this machine's CPU threads:

- bytes: one float32 adapter, one domain's packed mask (1 bit per parameter), a rescaler;
- ms to switch the body to a masked domain (unpack its 1-bit mask, write ``init + r * mask * (body - init)``
  into the model's parameters), as the README's loading snippet does per request of another domain;
- ms of a forward pass of 32 rows of 64 tokens with and without the per-row rescaler on the adapter output.

Run: ``python tests/benchmarks/bench_domain_serving.py`` (about a minute).
"""

from __future__ import annotations

import statistics
import time


def main() -> None:
    import torch

    from search.cli.demo import demo_base_model
    from spaces.domain_masks import packed_bytes
    from trainables.domain_serving import emr_merge, masked_body, pack_domain_mask, per_row_adapter_scale, \
        unpack_domain_mask
    from trainables.model import adapter_config_for, load_encoder
    from trainables.settings import AdapterConfig
    from trainables.store import ADAPTER_NAME

    torch.set_num_threads(2)
    model, tokenizer = load_encoder(demo_base_model())
    torch.manual_seed(0)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(AdapterConfig(method="seq_bn", reduction_factor=16)))
    model.set_active_adapters(ADAPTER_NAME)
    model.eval()
    params = {n: p for n, p in model.named_parameters() if f".adapters.{ADAPTER_NAME}." in n}
    init = {n: p.detach().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(1)
    members = [{n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in init.items()} for _ in range(16)]
    body, masks, rescalers = emr_merge(members, init)
    numel = sum(t.numel() for t in body.values())
    packed = pack_domain_mask(masks[0])
    print(f"adapter: {numel:,} parameters, {4 * numel:,} bytes float32; one domain's mask "
          f"{sum(t.numel() for t in packed.values()):,} bytes packed ({packed_bytes(numel):,} over the whole "
          f"adapter, 1/{4 * numel / sum(t.numel() for t in packed.values()):.0f}); a rescaler 4 bytes")

    def switch() -> None:
        mask = unpack_domain_mask(packed, body)
        served = masked_body(init, body, mask, rescalers[0])
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(served[n])

    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        switch()
        times.append(1000 * (time.perf_counter() - t0))
    print(f"switch the body to a masked domain: {statistics.median(times):.2f} ms (median of 50)")
    batch = tokenizer(["a plain sentence about a product that works well enough " * 6] * 32, truncation=True,
                      max_length=64, padding="max_length", return_tensors="pt")
    scales = torch.linspace(0.5, 2.0, 32)

    def forward(rescaled: bool) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if rescaled:
                with per_row_adapter_scale(model, scales):
                    model(**batch)
            else:
                model(**batch)
        return 1000 * (time.perf_counter() - t0)

    for rescaled in (False, True):
        forward(rescaled)
    plain = statistics.median(forward(False) for _ in range(20))
    rescaled = statistics.median(forward(True) for _ in range(20))
    print(f"forward, 32 rows x 64 tokens: {plain:.1f} ms plain, {rescaled:.1f} ms with a rescaler per row "
          f"({100 * (rescaled / plain - 1):+.1f}%; median of 20)")


if __name__ == "__main__":
    main()
