"""The command line's text tables and the one CSV writer."""

from __future__ import annotations

import csv

from search.tracking.tables import format_table, write_csv


def test_format_table_aligns_columns_and_shows_floats_with_four_decimals():
    assert format_table([["books", 0.5], ["dvd", 1]], ["target", "accuracy"]).splitlines() == [
        "target  accuracy", "------  --------", "books   0.5000", "dvd     1"]


def test_write_csv_keeps_floats_exact_and_leaves_no_temporary_file(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["name", "value", "note"], [["a", 0.1 + 0.2, None], ["b", 2, "x"]])
    assert path == tmp_path / "t.csv" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert rows == [["name", "value", "note"], ["a", "0.30000000000000004", ""], ["b", "2", "x"]]
