"""LoRA maths on ΔW = B·A·scaling: FSD, merging and refactorisation (trainables/lora.py)."""

from __future__ import annotations

import math

import pytest
import torch

from spaces.fsd import SignIndex, fraction_sign_difference, per_layer_fsd
from trainables.lora import concatenate_factors, factorise_svd, lora_delta_weights, lora_factors, merge_lora_deltas

MODULES = ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense")
SHAPES = {MODULES[0]: (12, 10), MODULES[1]: (10, 16)}  # [out, in]


def lora(seed: int, rank: int = 3, name: str = "signmix") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for module in MODULES:
        rows, cols = SHAPES[module]
        out[f"{module}.loras.{name}.lora_A"] = torch.randn(rank, cols, generator=g, dtype=torch.float64)
        out[f"{module}.loras.{name}.lora_B"] = torch.randn(rows, rank, generator=g, dtype=torch.float64)
    return out


def negated(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: -v for k, v in state.items()}


def test_delta_is_b_at_a_times_scaling_and_has_the_module_weight_shape():
    state = lora(0)
    deltas = lora_delta_weights(state, scaling=2.0)
    assert sorted(deltas) == sorted(MODULES)
    a = state[f"{MODULES[0]}.loras.signmix.lora_A"]
    b = state[f"{MODULES[0]}.loras.signmix.lora_B"]
    torch.testing.assert_close(deltas[MODULES[0]], b @ a * 2.0)
    assert tuple(deltas[MODULES[1]].shape) == SHAPES[MODULES[1]]


def test_peft_keys_and_per_module_ranks_and_scalings_are_read():
    g = torch.Generator().manual_seed(1)
    state = {"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": torch.randn(2, 10, generator=g),
             "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": torch.randn(12, 2, generator=g),
             "base_model.model.encoder.layer.0.attention.self.value.lora_A.weight": torch.randn(5, 10, generator=g),
             "base_model.model.encoder.layer.0.attention.self.value.lora_B.weight": torch.randn(12, 5, generator=g)}
    q, v = "base_model.model.encoder.layer.0.attention.self.query", "base_model.model.encoder.layer.0.attention.self.value"
    deltas = lora_delta_weights(state, scaling={q: 4.0, v: 0.5})
    torch.testing.assert_close(deltas[v], state[f"{v}.lora_B.weight"] @ state[f"{v}.lora_A.weight"] * 0.5)
    torch.testing.assert_close(deltas[q], state[f"{q}.lora_B.weight"] @ state[f"{q}.lora_A.weight"] * 4.0)
    with pytest.raises(ValueError, match="no scaling for LoRA module"):
        lora_delta_weights(state, scaling={q: 4.0})


@pytest.mark.parametrize("state, message", [
    ({"x.loras.s.lora_A": torch.zeros(2, 3)}, "not both lora_A and lora_B"),
    ({"x.adapters.s.adapter_down.0.weight": torch.zeros(2, 3)}, "is not a LoRA factor"),
    ({"x.loras.s.lora_A": torch.zeros(2, 3), "x.loras.s.lora_B": torch.zeros(4, 3)}, "with one r"),
])
def test_malformed_state_dicts_are_named(state, message):
    with pytest.raises(ValueError, match=message):
        lora_factors(state)


def test_fsd_of_factors_negated_together_is_zero_on_delta_but_one_on_factors():
    a = lora(0)
    b = negated(a)  # B -> -B and A -> -A: the same update
    assert fraction_sign_difference(a, b) == 1.0  # factor-wise FSD: every sign differs
    deltas = {name: lora_delta_weights(w, scaling=2.0) for name, w in (("x", a), ("y", b), ("z", lora(5)))}
    assert fraction_sign_difference(deltas["x"], deltas["y"]) == 0.0
    assert set(per_layer_fsd(deltas["x"], deltas["y"]).values()) == {0.0}
    index = SignIndex.from_weights(deltas)  # what the store indexes for LoRA adapters
    assert float(index.matrix[0, 1]) == 0.0
    assert 0.3 < float(index.matrix[0, 2]) < 0.7  # an unrelated random update: about half the signs


def test_average_on_delta_is_the_mean_update_not_the_product_of_mean_factors():
    a, b = lora(0), negated(lora(0))
    merged = merge_lora_deltas([lora_delta_weights(a, scaling=1.0), lora_delta_weights(b, scaling=1.0)])
    # The two adapters make the same update, so their mixture must make it too; averaging
    # the factors instead gives mean(B)·mean(A) = 0.
    for module, delta in lora_delta_weights(a, scaling=1.0).items():
        torch.testing.assert_close(merged[module], delta)


def test_task_arithmetic_on_delta_uses_zero_as_the_shared_initialisation():
    deltas = [lora_delta_weights(lora(s), scaling=1.0) for s in (0, 1)]
    merged = merge_lora_deltas(deltas, method="task_arithmetic", lam=2.0)
    for module in MODULES:
        torch.testing.assert_close(merged[module], deltas[0][module] + deltas[1][module])


def test_svd_at_full_rank_reproduces_delta():
    delta = lora_delta_weights(lora(0, rank=3), scaling=2.0)
    fact = factorise_svd(delta, rank=10, scaling=2.0)
    assert fact.relative_error < 1e-12
    assert fact.alpha == 20.0
    back = lora_delta_weights(fact.state_dict, scaling=fact.scaling)
    for module in MODULES:
        torch.testing.assert_close(back[module], delta[module])


def test_truncated_svd_error_is_the_dropped_singular_mass():
    deltas = [lora_delta_weights(lora(s, rank=3), scaling=1.0) for s in (0, 1, 2)]
    merged = merge_lora_deltas(deltas)
    fact = factorise_svd(merged, rank=4, scaling=0.5)
    dropped, norm = 0.0, 0.0
    for module, delta in merged.items():
        s = torch.linalg.svdvals(delta)
        assert int((s > 1e-9).sum()) == 9  # rank 3 + 3 + 3
        dropped += float((s[4:] ** 2).sum())
        norm += float((delta ** 2).sum())
    expected = math.sqrt(dropped / norm)
    assert 0.05 < expected < 1.0
    assert fact.relative_error == pytest.approx(expected, rel=1e-9)
    back = lora_delta_weights(fact.state_dict, scaling=0.5)
    actual = math.sqrt(sum(float(((back[m] - merged[m]) ** 2).sum()) for m in merged) / norm)
    assert actual == pytest.approx(expected, rel=1e-9)


def test_concatenation_is_exact_with_ranks_summed():
    members = [lora(0, rank=2), lora(1, rank=3)]
    scalings, weights = [2.0, 0.5], [3.0, 1.0]
    fact = concatenate_factors(members, scalings=scalings, weights=weights, scaling=1.0)
    assert fact.rank == 5 and fact.relative_error == 0.0
    expected = merge_lora_deltas([lora_delta_weights(m, scaling=s) for m, s in zip(members, scalings)],
                                 weights=weights)
    back = lora_delta_weights(fact.state_dict, scaling=1.0)
    for module in MODULES:
        torch.testing.assert_close(back[module], expected[module])


def test_concatenation_refuses_members_with_other_modules():
    other = {k: v for k, v in lora(1).items() if MODULES[1] not in k}
    with pytest.raises(ValueError, match="adapts other modules"):
        concatenate_factors([lora(0), other], scalings=[1.0, 1.0])


@pytest.mark.parametrize("rank, scaling, message", [(0, 1.0, "rank must be"), (2, 0.0, "scaling must be")])
def test_factorise_svd_rejects_bad_arguments(rank, scaling, message):
    with pytest.raises(ValueError, match=message):
        factorise_svd(lora_delta_weights(lora(0), scaling=1.0), rank=rank, scaling=scaling)
