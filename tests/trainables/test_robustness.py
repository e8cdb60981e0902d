"""FGSM on the input embeddings, on the tiny random BERT with an adapter trained in-process."""

from __future__ import annotations

import pytest

from trainables.data import encode_split, load_domain, shuffled_batches
from trainables.evaluate import classification_metrics, predict
from trainables.model import adapter_config_for, load_encoder
from trainables.robustness import fgsm_predict
from trainables.settings import AdapterConfig, DomainConfig
from trainables.store import ADAPTER_NAME

STEPS = [0.0, 0.01, 0.05, 0.2]


@pytest.fixture(scope="module")
def trained(tiny_bert, demo_domains):
    """The tiny BERT with a seq_bn adapter and head trained a few epochs on 60 "books"
    reviews, and those reviews encoded: a model that is right on most rows to attack.

    The body is trained too: behind a frozen random 32-wide body, adapter and head stay at
    chance (a constant prediction), which any perturbation can only flip to wrong."""
    import torch

    data = load_domain("books", DomainConfig(path=str(demo_domains["books"])), splits=("train",))
    model, tokenizer = load_encoder(tiny_bert)
    encoded = encode_split(tokenizer, data.splits["train"], 32)
    torch.manual_seed(0)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(AdapterConfig(method="seq_bn", reduction_factor=4)))
    model.add_classification_head(ADAPTER_NAME, num_labels=data.num_labels)
    model.train_adapter(ADAPTER_NAME)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for epoch in range(10):
        for _, batch in shuffled_batches(encoded, 16, seed=0, epoch=epoch):
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model, encoded, data.num_labels


def accuracy(preds, encoded, num_labels) -> float:
    return classification_metrics(preds, encoded.labels, num_labels)["accuracy"]


def test_step_zero_gives_exactly_the_clean_predictions(trained):
    model, encoded, _ = trained
    assert fgsm_predict(model, encoded, 16, 0.0) == predict(model, encoded, 16)
    rows = [3, 1, 40, 7]
    assert fgsm_predict(model, encoded, 2, 0.0, indices=rows) == predict(model, encoded, 2, indices=rows)


def test_accuracy_does_not_rise_as_the_step_grows(trained):
    model, encoded, num_labels = trained
    clean = accuracy(predict(model, encoded, 16), encoded, num_labels)
    assert clean >= 0.8, f"the adapter did not learn enough to attack (accuracy {clean})"
    robust = [accuracy(fgsm_predict(model, encoded, 16, step), encoded, num_labels) for step in STEPS]
    assert robust[0] == clean
    assert all(later <= earlier for earlier, later in zip(robust, robust[1:])), dict(zip(STEPS, robust))
    assert robust[-1] < robust[0], dict(zip(STEPS, robust))


def test_the_attack_leaves_the_model_as_it_was(trained):
    model, encoded, _ = trained
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fgsm_predict(model, encoded, 16, 0.05, indices=range(10))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(p.equal(before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("step", [-0.01, float("nan")])
def test_negative_step_is_rejected(trained, step):
    model, encoded, _ = trained
    with pytest.raises(ValueError, match=f"step must be >= 0, got {step}"):
        fgsm_predict(model, encoded, 16, step)
