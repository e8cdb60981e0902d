"""What a plan's body searches learn from one another (search/plan/transfer.py): pure numbers."""

from __future__ import annotations

import pytest

from search.plan.transfer import OperatorRecord
from spaces.merge_dimensions import MergeChoices

CHOICES = MergeChoices(merge_methods=("ties", "task_arithmetic"), densities=(0.1, 0.2),
                       lambdas=(1.0, 1.5, 2.0)).operator_choices()
TIES_02_15 = {"merge_method": "ties", "density": 0.2, "lambda": 1.5}
TIES_01_1 = {"merge_method": "ties", "density": 0.1, "lambda": 1.0}
TA_15 = {"merge_method": "task_arithmetic", "lambda": 1.5}


def test_the_choices_are_every_operator_with_every_parameter_value():
    assert len(CHOICES) == 2 * 3 + 3 and TIES_02_15 in CHOICES and TA_15 in CHOICES


def test_the_first_group_starts_afresh():
    assert OperatorRecord(CHOICES).first(4) == []


def test_a_new_group_first_evaluates_the_lowest_mean_regret_then_the_least_tried():
    record = OperatorRecord(CHOICES)
    record.add([(TIES_02_15, 0.80), (TIES_01_1, 0.78), (TA_15, 0.70)])  # regrets 0, 0.02, 0.10
    record.add([(TIES_02_15, 0.60), (TIES_01_1, 0.66), (TA_15, 0.61)])  # regrets 0.06, 0, 0.05
    assert record.mean_regret(TIES_02_15) == pytest.approx(0.03) and record.mean_regret(TIES_01_1) == pytest.approx(0.01)
    first = record.first(4)
    # the three tried, lowest mean regret first, then the first choice never tried (config order)
    assert first == [TIES_01_1, TIES_02_15, TA_15, {"merge_method": "ties", "density": 0.1, "lambda": 1.5}]
    assert record.first(2) == [TIES_01_1, {"merge_method": "ties", "density": 0.1, "lambda": 1.5}]
    assert record.first(1) == [TIES_01_1]  # one evaluation: the best so far, no exploring
    assert [r["choice"] for r in record.table()] == ["ties density 0.1 lambda 1.0", "ties density 0.2 lambda 1.5",
                                                     "task_arithmetic lambda 1.5"]


def test_a_choice_evaluated_twice_in_one_group_counts_its_best_and_every_choice_gets_tried_in_turn():
    record = OperatorRecord(CHOICES)
    record.add([(TIES_02_15, 0.70), (TIES_02_15, 0.80), (TA_15, 0.75)])
    assert record.mean_regret(TIES_02_15) == 0.0 and len(record.regrets) == 2
    seen = {tuple(sorted(c.items())) for c in (TIES_02_15, TA_15)}
    for _ in range(len(CHOICES) - 2):  # each group explores the least tried choice: all are tried in turn
        first = record.first(2)
        seen.update(tuple(sorted(c.items())) for c in first)
        record.add([(c, 0.5) for c in first])
    assert len(seen) == len(CHOICES)


def test_choice_of_reads_a_specs_operator_choice():
    from spaces.spec import make_mixture_spec

    spec = make_mixture_spec(members=["a", "b"], targets=["a", "b"], merge_method="ties", density=0.2, lam=1.5)
    merge = MergeChoices(merge_methods=("ties", "task_arithmetic"), densities=(0.1, 0.2), lambdas=(1.0, 1.5))
    assert merge.choice_of(spec) == TIES_02_15
    assert MergeChoices(merge_methods=("ties",), densities=(0.2,), lambdas=(1.5,)).choice_of(spec) == {
        "merge_method": "ties"}  # one value each: nothing searched
