"""Where a command's time goes: wall seconds and rows evaluated per named part.

A plan (``search/plan/serving_plan.py``) times its parts (the baselines, the probe passes, the
group searches, the serving options, the front on test) and prints one line per part at the
end, so that a user sees what a larger N or a smaller budget would change::

    clock = Stopwatch()
    with clock.part("baselines"):
        ...
    clock.add_rows("baselines", 1200)
    clock.lines(total=outcome.seconds)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence


@dataclass
class Stopwatch:
    """Seconds and evaluated rows per part, in the order the parts first ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Times the block as ``name`` (a part may run more than once: its times add up)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def add_rows(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + int(rows)

    def record(self) -> dict[str, dict]:
        """JSON-safe: part -> {"seconds", "rows"} (rows absent where a part did not count them)."""
        return {name: {"seconds": round(s, 3), **({"rows": self.rows[name]} if name in self.rows else {})}
                for name, s in self.seconds.items()}


def part_key(name: str) -> str:
    """A part's name as a metric key: ``distances (activation_fsd)`` -> ``distances_activation_fsd``."""
    return "_".join("".join(c if c.isalnum() else " " for c in name).split())


def rows_in(correct: Mapping[str, Mapping[str, Mapping[str, Sequence[int]]]]) -> int:
    """The rows scored in a correctness record (candidate -> split -> domain -> [0/1, ...])."""
    return sum(len(v) for splits in correct.values() for domains in splits.values() for v in domains.values())


def time_lines(parts: Mapping[str, Mapping], total: float) -> list[str]:
    """One line per part (seconds, share of ``total``, rows where counted), then what no part holds."""
    lines = []
    for name, p in parts.items():
        rows = f", {p['rows']:,} rows evaluated" if "rows" in p else ""
        lines.append(f"  {name}: {p['seconds']:.1f}s ({100 * p['seconds'] / total:.0f}%){rows}" if total > 0 else
                     f"  {name}: {p['seconds']:.1f}s{rows}")
    rest = total - sum(p["seconds"] for p in parts.values())
    if total > 0:
        lines.append(f"  the rest (checks, starting Ray, MLflow): {max(rest, 0.0):.1f}s ({100 * max(rest, 0.0) / total:.0f}%)")
    return lines
