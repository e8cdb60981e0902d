"""Refit heads: the fit itself, the features a ClassificationHead sees, and an installed head that round-trips."""

from __future__ import annotations

import pytest
import torch

from spaces.errors import SpecError
from trainables.data import EncodedSplit
from trainables.heads import cls_features, fit_linear_head, install_linear_head


def _separable(n_per_class: int = 40, d: int = 12, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=gen) * 4
    x = torch.cat([centres[c] + torch.randn(n_per_class, d, generator=gen) for c in range(classes)])
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x[:, 0] = x[:, 0] * 1000 + 5000  # columns on wildly different scales: the returned weights apply to raw x
    return x, y


def test_fit_reaches_full_train_accuracy_on_separable_features():
    x, y = _separable()
    weight, bias = fit_linear_head(x, y, 3)
    assert weight.shape == (3, 12) and bias.shape == (3,) and weight.dtype == torch.float32
    assert ((x @ weight.T + bias).argmax(dim=1) == y).all()


def test_fit_is_bit_identical_across_calls_and_thread_counts():
    x, y = _separable(seed=1)
    threads = torch.get_num_threads()
    first = fit_linear_head(x, y, 3)
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        second = fit_linear_head(x.clone(), y.clone(), 3)
        assert torch.get_num_threads() == (1 if threads > 1 else 2)  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_stronger_l2_gives_smaller_weights():
    x, y = _separable(seed=2)
    x = x[:, 1:]
    weak, strong = fit_linear_head(x, y, 3, l2=1e-4)[0], fit_linear_head(x, y, 3, l2=1.0)[0]
    assert strong.norm() < weak.norm() / 3


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((torch.zeros(4, 2), torch.tensor([0, 1, 2, 1]), 2), {}, "labels must be in range(2), got 2"),
    ((torch.zeros(4, 2), torch.tensor([0, 1]), 2), {}, "labels must be a vector of 4 classes"),
    ((torch.zeros(4), torch.tensor([0, 1, 0, 1]), 2), {}, "features must be a non-empty [n, d] matrix"),
    ((torch.zeros(4, 2), torch.tensor([0, 0, 0, 0]), 1), {}, "num_labels must be an integer >= 2, got 1"),
    ((torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), 2), {"l2": -1.0}, "l2 must be a finite number >= 0, got -1.0"),
    ((torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), 2), {"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
    ((torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]), 2), {}, "features contain NaN"),
])
def test_bad_fit_input_is_refused(args, kwargs, message):
    with pytest.raises(SpecError) as info:
        fit_linear_head(*args, **kwargs)
    assert message in str(info.value)


# On a tiny random BERT with a seq_bn adapter ---------------------------------------------------


def _tiny_model(seed: int = 0):
    from adapters import AutoAdapterModel, SeqBnConfig
    from transformers import BertConfig

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(seed)
    model = AutoAdapterModel.from_config(config)
    model.add_adapter("signmix", config=SeqBnConfig(reduction_factor=4))
    with torch.no_grad():  # a non-trivial adapter, so the features depend on it
        for name, p in model.named_parameters():
            if "adapters.signmix" in name:
                p.add_(torch.randn_like(p) * 0.3)
    model.set_active_adapters("signmix")
    model.eval()
    return model


def _encoded(rows: int = 11, seed: int = 0) -> EncodedSplit:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (rows,), generator=gen).tolist()
    ids = [[2] + torch.randint(5, 60, (n - 1,), generator=gen).tolist() for n in lengths]
    return EncodedSplit(input_ids=ids, token_type_ids=[[0] * n for n in lengths],
                        labels=[i % 2 for i in range(rows)], pad_token_id=0)


def test_installed_head_logits_are_features_times_weights_and_survive_save_and_load(tmp_path):
    from trainables.evaluate import predict

    model, encoded = _tiny_model(), _encoded()
    model.add_classification_head("old", num_labels=2)  # an existing two-layer head is not what we read
    features = cls_features(model, encoded, batch_size=4)
    assert features.shape == (11, 16)
    # Row order, not batch order: the features of rows [3, 0] are rows 3 and 0 of all features.
    torch.testing.assert_close(cls_features(model, encoded, batch_size=4, indices=[3, 0]), features[[3, 0]])

    weight, bias = fit_linear_head(features, torch.tensor(encoded.labels), 2)
    install_linear_head(model, "target", weight, bias, id2label={0: "neg", 1: "pos"})
    assert model.active_head == "target"
    manual = features @ weight.T + bias
    from trainables.data import iter_batches
    for rows, batch in iter_batches(encoded, 4):
        with torch.inference_mode():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(logits, manual[rows], atol=1e-5, rtol=0)

    model.save_head(str(tmp_path / "head"), "target")
    fresh = _tiny_model()
    fresh.load_head(str(tmp_path / "head"))
    assert fresh.active_head == "target"
    assert fresh.heads["target"].config["layers"] == 1
    assert fresh.config.prediction_heads["target"]["label2id"] == {"neg": 0, "pos": 1}
    expected = {row: int(manual[row].argmax()) for row in range(11)}
    assert predict(fresh, encoded, batch_size=4) == expected
    for rows, batch in iter_batches(encoded, 4):
        with torch.inference_mode():
            logits = fresh(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(logits, manual[rows], atol=1e-5, rtol=0)


def test_install_refuses_a_head_that_does_not_fit_the_model():
    model = _tiny_model()
    with pytest.raises(SpecError, match="has 8 input features but the model's hidden size is 16"):
        install_linear_head(model, "t", torch.zeros(2, 8), torch.zeros(2))
    with pytest.raises(SpecError, match=r"bias must have shape \(2,\)"):
        install_linear_head(model, "t", torch.zeros(2, 16), torch.zeros(3))
