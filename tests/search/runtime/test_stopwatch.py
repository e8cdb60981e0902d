"""Where a command's time goes: parts timed, rows counted, one line each."""

from __future__ import annotations

import time

import pytest

from search.runtime.stopwatch import Stopwatch, part_key, rows_in, time_lines


def test_a_part_that_runs_twice_adds_up_and_keeps_its_first_place():
    clock = Stopwatch()
    with clock.part("baselines"):
        time.sleep(0.01)
    with clock.part("group searches"):
        pass
    with clock.part("baselines"):
        time.sleep(0.01)
    assert list(clock.seconds) == ["baselines", "group searches"]
    assert clock.seconds["baselines"] >= 0.02


def test_a_part_that_fails_is_still_timed():
    clock = Stopwatch()
    with pytest.raises(RuntimeError), clock.part("probe"):
        raise RuntimeError("stopped")
    assert "probe" in clock.seconds


def test_rows_are_counted_only_where_a_part_counts_them():
    clock = Stopwatch()
    with clock.part("a"):
        pass
    with clock.part("b"):
        pass
    clock.add_rows("a", 3)
    clock.add_rows("a", 4)
    assert clock.record()["a"]["rows"] == 7 and "rows" not in clock.record()["b"]


def test_rows_in_a_correctness_record():
    correct = {"own/books": {"validation": {"books": [1, 0, 1]}, "test": {"books": [1, 1]}},
               "soup": {"validation": {"books": [0, 0, 0], "kitchen": [1]}}}
    assert rows_in(correct) == 9
    assert rows_in({}) == 0


def test_one_line_per_part_and_the_rest():
    lines = time_lines({"baselines": {"seconds": 30.0, "rows": 1200}, "group searches": {"seconds": 60.0}}, 100.0)
    assert lines == ["  baselines: 30.0s (30%), 1,200 rows evaluated", "  group searches: 60.0s (60%)",
                     "  the rest (checks, starting Ray, MLflow): 10.0s (10%)"]


def test_part_names_become_metric_keys():
    assert part_key("distances (activation_fsd)") == "distances_activation_fsd"
    assert part_key("the front on test") == "the_front_on_test"
