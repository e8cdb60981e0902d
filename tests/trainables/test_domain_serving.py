"""One domain served from a shared body: masked weights, and per-row rescalers on a tiny random seq_bn BERT."""

from __future__ import annotations

import copy

import pytest
import torch

from trainables.domain_serving import (
    adapter_up_modules,
    emr_merge,
    masked_body,
    pack_domain_mask,
    per_row_adapter_scale,
    tall_merge_masks,
    unpack_domain_mask,
)
from trainables.merging import merge_adapters
from trainables.store import ADAPTER_NAME


@pytest.fixture(scope="module")
def seq_bn_model():
    """A 2-layer, 32-wide random BERT with a seq_bn adapter (its up-projection not at zero) and a 3-way head."""
    from adapters import AutoAdapterModel, SeqBnConfig
    from transformers import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = AutoAdapterModel.from_config(config)
    model.add_adapter(ADAPTER_NAME, config=SeqBnConfig(reduction_factor=4))
    model.add_classification_head(ADAPTER_NAME, num_labels=3)
    model.set_active_adapters(ADAPTER_NAME)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(0.0, 0.3)  # a trained adapter's output is far from zero
    model.eval()
    return model


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".adapters.{ADAPTER_NAME}." in n}


def batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 6:] = 0  # padded rows too
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def with_scaled_up_projection(model, s: float):
    """The model whose adapter up-projections have s * W_up and s * b_up: the independent reference."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for module in adapter_up_modules(scaled):
            module.weight.mul_(s)
            module.bias.mul_(s)
    return scaled


def test_per_row_scales_equal_each_domains_rows_run_alone_with_its_scaled_adapter(seq_bn_model):
    inputs = batch(6)
    domain_of_row = [0, 1, 2, 0, 2, 1]
    rescalers = [0.5, 1.7, 0.0]
    with per_row_adapter_scale(seq_bn_model, [rescalers[d] for d in domain_of_row]):
        mixed = logits(seq_bn_model, inputs)
    for domain, s in enumerate(rescalers):
        rows = [i for i, d in enumerate(domain_of_row) if d == domain]
        alone = logits(with_scaled_up_projection(seq_bn_model, s), {k: v[rows] for k, v in inputs.items()})
        torch.testing.assert_close(mixed[rows], alone, rtol=1e-5, atol=1e-6)
    # the scalars matter: another domain's scalar gives other logits
    assert not torch.allclose(mixed[[0]], logits(with_scaled_up_projection(seq_bn_model, 1.7), {
        k: v[[0]] for k, v in inputs.items()}), atol=1e-4)


def test_one_number_scales_every_row(seq_bn_model):
    inputs = batch(3, seed=2)
    with per_row_adapter_scale(seq_bn_model, 0.8):
        got = logits(seq_bn_model, inputs)
    torch.testing.assert_close(got, logits(with_scaled_up_projection(seq_bn_model, 0.8), inputs), rtol=1e-5, atol=1e-6)


def test_scale_one_is_the_body_scale_zero_is_no_adapter_and_the_hooks_go_away(seq_bn_model):
    inputs = batch(4, seed=1)
    plain = logits(seq_bn_model, inputs)
    with per_row_adapter_scale(seq_bn_model, torch.ones(4)):
        torch.testing.assert_close(logits(seq_bn_model, inputs), plain, rtol=0, atol=0)
    with per_row_adapter_scale(seq_bn_model, torch.zeros(4)):
        zero = logits(seq_bn_model, inputs)
    seq_bn_model.set_active_adapters(None)
    try:
        without = logits(seq_bn_model, inputs)
    finally:
        seq_bn_model.set_active_adapters(ADAPTER_NAME)
    torch.testing.assert_close(zero, without, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, without, atol=1e-3)
    torch.testing.assert_close(logits(seq_bn_model, inputs), plain, rtol=0, atol=0)


@pytest.mark.parametrize("scales,rows,message", [
    ([1.0, 2.0], 3, "the batch has 3 rows but 2 scales"),
    ([[1.0, 2.0]], 1, "one finite number or a 1-D tensor"),
    ([1.0, float("nan")], 2, "one finite number or a 1-D tensor"),
])
def test_per_row_scales_refuse_what_does_not_fit(seq_bn_model, scales, rows, message):
    with pytest.raises(ValueError, match=message):
        with per_row_adapter_scale(seq_bn_model, scales):
            logits(seq_bn_model, batch(rows))
    assert all(not m._forward_hooks for m in adapter_up_modules(seq_bn_model))


def test_a_model_without_that_bottleneck_adapter_is_refused(seq_bn_model):
    with pytest.raises(ValueError, match="no bottleneck adapter 'other'"):
        with per_row_adapter_scale(seq_bn_model, [1.0], adapter_name="other"):
            pass


def random_members(init: dict[str, torch.Tensor], count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in init.items()} for _ in range(count)]


def test_emr_domain_weights_equal_the_direct_formula_and_load_into_the_model(seq_bn_model):
    init = adapter_weights(seq_bn_model)
    members = random_members(init, 3, seed=2)
    body, masks, rescalers = emr_merge(members, init)
    for t, member in enumerate(members):
        served = masked_body(init, body, masks[t], rescalers[t])
        for key in init:
            stacked = torch.stack([m[key] - init[key] for m in members])
            sign = torch.sign(stacked.sum(0))
            unified = sign * torch.where(stacked * sign > 0, stacked.abs(), 0.0).amax(0)
            mask = (member[key] - init[key]) * unified > 0
            torch.testing.assert_close(served[key], init[key] + rescalers[t] * mask * unified, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(body[key], init[key] + unified, rtol=1e-6, atol=1e-7)
        # the rescaler is the paper's: the member's L1 mass over the masked unified vector's
        num = sum(float((m_key - init[k]).abs().sum()) for k, m_key in member.items())
        den = sum(float((masks[t][k] * (body[k] - init[k])).abs().sum()) for k in init)
        assert rescalers[t] == pytest.approx(num / den, rel=1e-5)
        # the served weights are the adapter's own parameters: they load into the slot
        model = copy.deepcopy(seq_bn_model)
        missing = model.load_state_dict(served, strict=False)
        assert not missing.unexpected_keys


def test_emr_of_one_member_serves_it_exactly():
    init = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    (member,) = random_members(init, 1, seed=3)
    member["w"][0, 0] = init["w"][0, 0]  # an entry the adapter never moved
    body, (mask,), (rescaler,) = emr_merge([member], init)
    assert rescaler == pytest.approx(1.0)
    served = masked_body(init, body, mask, rescaler)
    for key in init:
        torch.testing.assert_close(served[key], member[key], rtol=0, atol=1e-6)


def test_tall_domain_weights_equal_the_direct_formula():
    init = {"w": torch.randn(5, 4), "b": torch.randn(5)}
    members = random_members(init, 3, seed=4)
    body = merge_adapters(members, method="task_arithmetic", init=init, lam=2.0)
    lambdas = [0.2, 0.6, 1.0]
    masks = tall_merge_masks(members, init, body, lambdas)
    for t, member in enumerate(members):
        served = masked_body(init, body, masks[t])
        for key in init:
            tau, tau_mtl = member[key] - init[key], body[key] - init[key]
            mask = tau.abs() >= lambdas[t] * (tau_mtl - tau).abs()
            assert torch.equal(masks[t][key], mask)
            torch.testing.assert_close(served[key], init[key] + mask * tau_mtl, rtol=0, atol=1e-6)
    kept = [sum(int(m.sum()) for m in mask.values()) for mask in masks]
    assert 0 < kept[-1] < sum(m.numel() for m in masks[-1].values())  # a mask that keeps some entries, not all


def test_a_packed_domain_mask_serves_the_same_weights():
    init = {"w": torch.randn(7, 3), "b": torch.randn(7)}  # 21 and 7 entries: not multiples of 8
    members = random_members(init, 4, seed=5)
    body, masks, rescalers = emr_merge(members, init)
    packed = pack_domain_mask(masks[2])
    assert {k: v.numel() for k, v in packed.items()} == {"w": 3, "b": 1}
    back = unpack_domain_mask(packed, body)
    assert all(torch.equal(back[k], masks[2][k]) for k in masks[2])
    assert all(torch.equal(masked_body(init, body, back, rescalers[2])[k],
                           masked_body(init, body, masks[2], rescalers[2])[k]) for k in init)
    with pytest.raises(ValueError, match="'b' is only in one of them"):
        unpack_domain_mask({"w": packed["w"]}, body)


@pytest.mark.parametrize("rescaler,mask_dtype,message", [
    (float("inf"), torch.bool, "rescaler must be a finite number"),
    (True, torch.bool, "rescaler must be a finite number"),
    (1.0, torch.float32, "mask\\['w'\\] must be a bool tensor"),
])
def test_masked_body_refuses_bad_input(rescaler, mask_dtype, message):
    init = {"w": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=message):
        masked_body(init, {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2, dtype=mask_dtype)}, rescaler)
