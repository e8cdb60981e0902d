"""The conflict measures as pure functions: tensors and arrays in, numbers out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spaces.fsd import SignIndex
from spaces.measures import (
    MEASURES,
    PairwiseMeasure,
    activation_fsd,
    check_measure_names,
    check_probe_size,
    cross_head,
    delta_fsd,
    mean_pairwise,
    merge_gap,
    probe_rows,
    weight_fsd,
)


def _adapters(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {name: {"encoder.layer.0.adapters.x.down.weight": torch.randn(4, 6, generator=g),
                   "encoder.layer.1.adapters.x.down.weight": torch.randn(3, 5, generator=g)}
            for name in ("a", "b", "c")}


def test_weight_fsd_equals_the_sign_index_and_has_per_layer_values():
    weights = _adapters()
    measure = weight_fsd(weights)
    index = SignIndex.from_weights(weights)
    np.testing.assert_allclose(measure.matrix, index.matrix.numpy())
    assert sorted(measure.per_layer) == ["layer.0", "layer.1"]
    # the overall FSD is the layers' FSD weighted by their sizes
    np.testing.assert_allclose(measure.matrix, (measure.per_layer["layer.0"] * 24 + measure.per_layer["layer.1"] * 15) / 39)
    assert measure.subset(["a", "b", "c"]) == pytest.approx(index.subset_fsd(["a", "b", "c"]))


def test_delta_fsd_sees_conflict_that_a_shared_initialisation_hides():
    # Two adapters = one large initialisation + small opposite updates: their weights share
    # every sign (weight FSD 0), their deltas disagree everywhere (delta FSD 1).
    init = {"encoder.layer.0.w": torch.full((10,), 5.0)}
    update = torch.linspace(0.1, 1.0, 10)
    weights = {"a": {"encoder.layer.0.w": init["encoder.layer.0.w"] + update},
               "b": {"encoder.layer.0.w": init["encoder.layer.0.w"] - update}}
    assert weight_fsd(weights).subset(["a", "b"]) == 0.0
    assert delta_fsd(weights, init).subset(["a", "b"]) == 1.0
    # LoRA: no initialisation to subtract, the ΔW are the deltas
    assert delta_fsd(weights, None).subset(["a", "b"]) == 0.0


def test_delta_fsd_refuses_an_initialisation_of_another_layout():
    with pytest.raises(ValueError, match="different parameters"):
        delta_fsd(_adapters(), {"other": torch.zeros(3)})


def test_activation_fsd_counts_opposite_effects_per_layer():
    effects = {"a": {"layer.0": torch.ones(4, 3), "layer.1": torch.ones(4, 3)},
               "b": {"layer.0": -torch.ones(4, 3), "layer.1": torch.ones(4, 3)}}
    measure = activation_fsd(effects)
    assert measure.per_layer["layer.0"][0, 1] == 1.0 and measure.per_layer["layer.1"][0, 1] == 0.0
    assert measure.subset(["a", "b"]) == 0.5


def test_cross_head_is_the_accuracy_a_head_loses_on_the_other_adapter():
    # rows: adapter; columns: head (and probe examples) of that domain
    scores = np.array([[0.9, 0.6, 0.7],
                       [0.5, 0.8, 0.8],
                       [0.9, 0.8, 0.8]])
    measure = cross_head(scores, ["a", "b", "c"])
    # a-b: head b loses 0.8 - 0.6 on adapter a, head a loses 0.9 - 0.5 on adapter b
    assert measure.matrix[0, 1] == pytest.approx((0.2 + 0.4) / 2)
    assert measure.matrix[0, 2] == pytest.approx((0.1 + 0.0) / 2)
    np.testing.assert_allclose(measure.matrix, measure.matrix.T)
    assert np.all(np.diag(measure.matrix) == 0)


def test_cross_head_uses_one_direction_where_a_domain_has_no_head():
    # b: an imported adapter without data or head; only head a reading adapter b is measured
    scores = np.array([[0.9, np.nan], [0.5, np.nan]])
    assert cross_head(scores, ["a", "b"]).matrix[0, 1] == pytest.approx(0.4)


def test_merge_gap_is_the_disagreement_with_the_members_ensemble():
    members = {"t": {"a": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),
                     "b": np.array([[0.8, 0.2], [0.4, 0.6], [0.2, 0.8], [0.1, 0.9]])}}
    # ensemble: mean -> [0.85, 0.3, 0.4, 0.2] for class 0 -> predictions 0, 1, 1, 1
    merged = {"t": np.array([[0.7, 0.3], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])}  # 0, 0, 1, 1
    assert merge_gap(merged, members) == 0.25
    with pytest.raises(ValueError, match="same probe examples"):
        merge_gap({"t": merged["t"][:3]}, members)


def test_a_measure_survives_its_json_round_trip():
    measure = weight_fsd(_adapters())
    again = PairwiseMeasure.from_json(measure.to_json())
    np.testing.assert_array_equal(again.matrix, measure.matrix)
    assert again.names == measure.names and sorted(again.per_layer) == sorted(measure.per_layer)


def test_mean_pairwise_skips_missing_pairs_and_is_zero_for_one_member():
    matrix = np.array([[0, 0.2, np.nan], [0.2, 0, 0.4], [np.nan, 0.4, 0]])
    assert mean_pairwise(matrix, [0]) == 0.0
    assert mean_pairwise(matrix, [0, 1, 2]) == pytest.approx(0.3)
    assert math.isnan(mean_pairwise(matrix, [0, 2]))


def test_probe_rows_are_seeded_and_capped_by_the_split():
    assert probe_rows(1000, 16, seed=3) == probe_rows(1000, 16, seed=3) != probe_rows(1000, 16, seed=4)
    assert len(set(probe_rows(1000, 16, seed=3))) == 16
    assert probe_rows(10, 16, seed=3) == list(range(10))


@pytest.mark.parametrize("names, expected", [
    (["all"], list(MEASURES)),
    (["cross_head", "weight_fsd"], ["weight_fsd", "cross_head"]),
])
def test_measure_names(names, expected):
    assert check_measure_names(names, field_name="--measures") == expected


def test_an_unknown_measure_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"--measures: unknown measure 'cka'; the measures are weight_fsd, "):
        check_measure_names(["weight_fsd", "cka"], field_name="--measures")


@pytest.mark.parametrize("size", [0, 7, 4097, 12.5, True, "128"])
def test_a_probe_size_out_of_range_is_refused(size):
    with pytest.raises(ValueError, match=r"search.probe_size: got .*: the probe size must be an integer in \[8, 4096\]"):
        check_probe_size(size, field_name="search.probe_size")
