"""The parts of a new domain's baselines (issue 19): "base + refit head" is the base encoder (a
zeroed adapter is the identity), the draw of the few examples, AdapterSoup's nearest domains."""

from __future__ import annotations

import pytest

from trainables.embeddings import most_similar
from trainables.mix_and_prune import prune_by_magnitude
from trainables.settings import DomainConfig, TrainingConfig, train_draw


@pytest.mark.parametrize("method", ["seq_bn", "lora"])
def test_an_adapter_pruned_100_percent_gives_the_base_encoders_features(tiny_bert, method):
    import torch
    from adapters import AutoAdapterModel, LoRAConfig, SeqBnConfig

    model = AutoAdapterModel.from_pretrained(tiny_bert).eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]]),
             "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        base = model.base_model(**batch).last_hidden_state
    model.add_adapter("a", config=SeqBnConfig(reduction_factor=4) if method == "seq_bn" else LoRAConfig(r=4))
    model.set_active_adapters("a")
    params = {n: p for n, p in model.named_parameters() if ".a." in n}
    with torch.no_grad():
        for p in params.values():
            p.normal_()  # a trained-looking adapter: features differ from the base's
        moved = model.base_model(**batch).last_hidden_state
        zeroed = prune_by_magnitude({n: p.detach().clone() for n, p in params.items()}, 1.0)
        for n, p in params.items():
            p.copy_(zeroed[n])
        pruned = model.base_model(**batch).last_hidden_state
    assert not torch.allclose(moved, base, atol=1e-4)
    assert torch.allclose(pruned, base, atol=1e-6)


def test_the_few_examples_are_the_domains_cap_and_seed_or_the_training_sections():
    training = TrainingConfig(max_train_examples=400, seed=0)
    assert train_draw(training, DomainConfig(path="x")) == (400, 0)
    assert train_draw(training, DomainConfig(path="x", train=False, max_train_examples=16, draw_seed=2)) == (16, 2)


def test_adaptersoup_picks_the_k_nearest_domains_by_cosine():
    import torch

    centroids = {"new": torch.tensor([1.0, 0.0]), "a": torch.tensor([0.9, 0.1]), "b": torch.tensor([0.0, 1.0]),
                 "c": torch.tensor([2.0, 0.5]), "d": torch.tensor([-1.0, 0.0])}
    near = most_similar(centroids, "new", ["a", "b", "c", "d", "new"], 2)
    assert [d for d, _ in near] == ["a", "c"] and near[0][1] > near[1][1]
