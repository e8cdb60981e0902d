"""The one way from a mixture to its MLflow parameters and back, for every operator and head protocol."""

from __future__ import annotations

import itertools
import json

import pytest

from search.tracking.layout import MERGE_PARAMS, merge_parameters_record, spec_from_params, spec_params
from spaces.operators import HEAD_PROTOCOLS, MERGE_OPERATORS, OPERATOR_PARAMETERS
from spaces.spec import make_mixture_spec

ALL = {"density": 0.3, "drop_rate": 0.25, "lam": 1.7, "merge_seed": 11}


def _spec(method: str, head: str, **extra):
    return make_mixture_spec(members=["books", "dvd", "kitchen"], targets=["books", "dvd"], weights=[0.5, 0.2, 0.3],
                             merge_method=method, head=head, require_targets=False, **ALL, **extra)


@pytest.mark.parametrize(("method", "head"), list(itertools.product(MERGE_OPERATORS, HEAD_PROTOCOLS)))
def test_every_operator_and_head_round_trips_through_mlflow_params(method, head):
    spec = _spec(method, head, prune_method="magnitude", prune_ratio=0.5)
    logged = spec_params(spec, strategy="tpe", measure="mean_pairwise")
    assert all(isinstance(v, str) for v in logged.values())  # what MLflow stores
    back = spec_from_params(logged)
    assert back == spec and back.key == spec.key
    # only the parameters the operator takes are logged, under their MLflow names
    taken = {OPERATOR_PARAMETERS[p].logged_as for p in MERGE_OPERATORS[method].parameters}
    assert {name for name in MERGE_PARAMS if name in logged} == taken


@pytest.mark.parametrize(("method", "head"), list(itertools.product(MERGE_OPERATORS, HEAD_PROTOCOLS)))
def test_every_operator_and_head_round_trips_through_an_export_record(method, head):
    spec = _spec(method, head, prune_method="conflict_layers", prune_ratio=0.9, prune_layers=2)
    record = json.loads(json.dumps({
        "members": list(spec.members), "weights": list(spec.weights), "targets": list(spec.targets),
        "prune_method": spec.prune_method, "prune_ratio": spec.prune_ratio, "prune_scope": spec.prune_scope,
        "prune_when": spec.prune_when, "prune_layers": spec.prune_layers, "merge_method": spec.merge_method,
        "merge_parameters": merge_parameters_record(spec), "head": spec.head}))
    assert spec_from_params(record) == spec


def test_lambda_is_logged_as_lambda_and_read_back_as_lam():
    spec = _spec("task_arithmetic", "own")
    logged = spec_params(spec, strategy="tpe", measure="mean_pairwise")
    assert logged["lambda"] == "1.7" and "lam" not in logged
    assert spec_from_params(logged).lam == 1.7


def test_runs_logged_before_operators_and_heads_existed_read_as_average_and_own():
    old = {"members": "books,dvd", "targets": "books", "weights": "0.5,0.5", "prune_method": "none",
           "prune_ratio": "0", "prune_scope": "adapter", "prune_when": "members"}
    spec = spec_from_params(old)
    assert (spec.merge_method, spec.head, spec.prune_layers) == ("average", "own", 0)
    assert spec == make_mixture_spec(members=["books", "dvd"], targets=["books"])


@pytest.mark.parametrize(("name", "value", "logged"), [
    ("accuracy_mean", (0.58 + 0.99) / 2, 0.785),          # a mean of ratios (0.7849999999999999): rounded
    ("test_accuracy/G2", (0.58 + 0.99) / 2, 0.785),       # a plan's mean over domains for G = 2
    ("chosen_test_ci_low", 0.1 + 0.2, 0.3),
    ("fsd", 0.1 + 0.2, 0.3),
    ("accuracy/books", 1 / 3, 1 / 3),                     # one division: as computed (export reproduces it)
    ("test_accuracy/books", 1 / 3, 1 / 3),
    ("eval_seconds", 0.1 + 0.2, 0.1 + 0.2),               # not a ratio
    ("p_vs_own/books", 1e-12, 1e-12),                     # a p-value keeps its small digits
])
def test_means_of_ratios_of_counts_are_logged_rounded_and_nothing_else_is(name, value, logged):
    from search.tracking.layout import logged_value

    assert logged_value(name, value) == logged
