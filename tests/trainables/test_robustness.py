"""FGSM on the input embeddings, on the tiny random BERT with an adapter trained in-process."""

from __future__ import annotations

import pytest

from trainables.evaluate import classification_metrics, predict
from trainables.robustness import fgsm_predict

STEPS = [0.0, 0.01, 0.05, 0.2]


@pytest.fixture(scope="module")
def trained(trained_tiny_books):
    return trained_tiny_books.model, trained_tiny_books.encoded, trained_tiny_books.num_labels


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
