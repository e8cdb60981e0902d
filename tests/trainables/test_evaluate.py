"""The metrics every evaluation of a mixture reports (trainables/evaluate.py); the model side
(predict, MixtureModel, devices) is in test_device.py."""

from __future__ import annotations

import math

import pytest

from trainables.data import EncodedSplit
from trainables.evaluate import target_metrics


def _split(labels: list[int]) -> EncodedSplit:
    return EncodedSplit(input_ids=[[1]] * len(labels), token_type_ids=None, labels=labels, pad_token_id=0)


def test_target_metrics_per_target_and_their_mean():
    encoded = {"books": _split([0, 1, 1, 0]), "dvd": _split([2, 2])}
    preds = {"books": {0: 0, 1: 1, 2: 0, 3: 0}, "dvd": {0: 2, 1: 0}}
    metrics = target_metrics(preds, encoded, {"books": 2, "dvd": 3})
    assert metrics["accuracy/books"] == 0.75 and metrics["accuracy/dvd"] == 0.5
    assert metrics["accuracy_mean"] == pytest.approx(0.625)
    # books: class 0 F1 = 2*2/(4+1) = 0.8, class 1 F1 = 2/3; dvd: class 2 F1 = 2/3, class 0 F1 = 0.
    assert metrics["macro_f1/books"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["macro_f1/dvd"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_a_target_with_no_prediction_yet_is_nan_not_zero():
    metrics = target_metrics({"books": {}}, {"books": _split([0, 1])}, {"books": 2})
    assert math.isnan(metrics["accuracy/books"]) and math.isnan(metrics["accuracy_mean"])
