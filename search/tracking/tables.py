"""Tables: plain aligned text for the command line, and the one CSV writer."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Sequence


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in header]] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a CSV atomically (a temporary sibling, then a rename); returns its path. Floats at full
    precision (format them first for fewer digits), None as an empty cell."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if v is None else repr(v) if isinstance(v, float) else v for v in r] for r in rows])
    os.replace(tmp, path)
    return path
