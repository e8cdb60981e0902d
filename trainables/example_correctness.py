"""Per-example correctness of an evaluated mixture: which validation examples it got right.

A search trial writes it beside the mixture's checkpoint (:data:`VALIDATION_CORRECTNESS_FILE`,
logged with the mixture's MLflow artifact), so that the end of a search (the tie rule's paired
comparisons, the summary's baselines) reads it instead of evaluating the mixture again. One
string of ``0``/``1`` per target, in row order: 200 examples cost 200 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

VALIDATION_CORRECTNESS_FILE = "validation_correctness.json"

# The correctness entry of a confirmation candidate's attacked test rows (search.blackbox_attack):
# per target, whether each attacked row is still right after the black-box attack.
BLACKBOX_TEST = "blackbox_test"


def correct_rows(preds: Mapping[int, int], labels: Sequence[int]) -> list[int]:
    """1 where the prediction of row i is its label, 0 where not, for every row in order."""
    return [int(preds[row] == labels[row]) for row in range(len(labels))]


def write_correctness(folder: str | Path, split: str, per_target: Mapping[str, Sequence[int]]) -> Path:
    """Write ``{"split": split, "targets": {t: "0110..."}}`` into ``folder``; returns the file."""
    path = Path(folder) / VALIDATION_CORRECTNESS_FILE
    blob = {"split": split, "targets": {t: "".join("1" if c else "0" for c in rows) for t, rows in per_target.items()}}
    path.write_text(json.dumps(blob), encoding="utf-8")
    return path


def read_correctness(path: str | Path) -> dict[str, list[int]]:
    """Target -> per-example 0/1, as :func:`write_correctness` wrote them.

    Raises:
        ValueError: the file is not such a record.
    """
    blob = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(blob, dict) or not isinstance(blob.get("targets"), dict) \
            or not all(isinstance(v, str) and set(v) <= {"0", "1"} for v in blob["targets"].values()):
        raise ValueError(f"{path} is not a per-example correctness record")
    return {t: [int(c) for c in v] for t, v in blob["targets"].items()}
