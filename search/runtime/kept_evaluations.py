"""Per-example correctness kept in the store, so that no mixture is evaluated twice on a split.

An own adapter's, the soup's or a cross head's accuracy on a split does not depend on the
search that asks for it: every search of a store, every plan and every confirmation needs the
same few baselines. Each evaluation the confirmation trials make is written to
``<store>/.correctness/<fingerprint>.json``, one file per target, fingerprinted by everything
its 0/1 list depends on: the mixture's body (its canonical spec without the targets), the target,
the split, the files of every adapter it reads (members, and the target's head), the files of the
target's data, and the settings that shape the rows and the model (base model, adapter method,
training section, evaluation dtype, LoRA merge, and on test the black-box attack). A retrained
adapter or an edited data file changes the fingerprint; deleting the folder forgets everything.
Files are written whole (a temporary name, then a rename), so a crash leaves the record or nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from spaces.measures import measures_fingerprint
from trainables.example_correctness import BLACKBOX_TEST
from trainables.store import write_json_atomic

if TYPE_CHECKING:
    from search.settings.config import Config
    from spaces.spec import MixtureSpec

logger = logging.getLogger(__name__)

CORRECTNESS_DIR = ".correctness"


def _folder_stamp(path: str | os.PathLike | None) -> list | None:
    """Name, size and modification time of a folder's files (not recursive; links followed)."""
    if path is None or not Path(path).is_dir():
        return None
    stamp = []
    for entry in sorted(Path(path).iterdir()):
        if entry.is_file():
            st = entry.stat()
            stamp.append([entry.name, st.st_size, st.st_mtime_ns])
    return stamp


class StoredCorrectness:
    """Reads and writes the per-example correctness of ``cfg``'s store, one file per (mixture,
    split, target): a target's rows under a mixture do not depend on the mixture's other targets
    (its body is built from the members alone, and each head is the target's own or refit on the
    target's rows alone), so a mixture asked for more targets than before evaluates only the new."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = Path(cfg.store_path) / CORRECTNESS_DIR
        self._stamps: dict[str, list | None] = {}

    def _stamp(self, path) -> list | None:
        key = str(path)
        if key not in self._stamps:
            self._stamps[key] = _folder_stamp(path)
        return self._stamps[key]

    def fingerprint(self, spec: MixtureSpec, split: str, target: str) -> str:
        cfg = self.cfg
        body = {k: v for k, v in spec.canonical().items() if k != "targets"}
        domains = {d: {"settings": cfg.domains[d].model_dump(), "data": self._stamp(cfg.domains[d].path) if d == target
                       else None, "store": self._stamp(Path(cfg.store_path) / d)}
                   for d in sorted({*spec.members, target}) if d in cfg.domains}
        search = cfg.search
        parts = {"body": body, "target": target, "split": split, "base_model": cfg.base_model,
                 "adapter": cfg.adapter.model_dump(), "training": cfg.training.model_dump(), "domains": domains,
                 "dtype": search.eval_dtype, "lora_merge": search.lora_merge,
                 "blackbox": (search.blackbox_attack.model_dump()
                              if search.blackbox_attack is not None and split == "test" else None)}
        return measures_fingerprint(parts)

    def read(self, spec: MixtureSpec, split: str, target: str) -> dict | None:
        """``{split: [0/1 ...]}`` of ``target`` (and its black-box entry on test when attacked), or None."""
        path = self.root / f"{self.fingerprint(spec, split, target)}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))["correct"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(entry, dict) or split not in entry:
            return None
        if self.cfg.search.blackbox_attack is not None and split == "test" and BLACKBOX_TEST not in entry:
            return None
        return entry

    def write(self, spec: MixtureSpec, per_split: Mapping[str, Mapping]) -> None:
        """Keep each target's rows of each split of one mixture's evaluation (best effort: a
        read-only store is not an error)."""
        for split, per_target in per_split.items():
            if split == BLACKBOX_TEST:
                continue
            for target, correct in per_target.items():
                entry = {split: correct}
                if split == "test" and target in per_split.get(BLACKBOX_TEST, {}):
                    entry[BLACKBOX_TEST] = per_split[BLACKBOX_TEST][target]
                self._write(self.fingerprint(spec, split, target),
                            {"label": spec.label(), "split": split, "target": target, "correct": entry})

    def _write(self, fingerprint: str, record: dict) -> None:
        try:
            write_json_atomic(self.root / f"{fingerprint}.json", record)
        except OSError as exc:
            logger.warning("could not keep the evaluation of %s on %s in %s (%s)", record["label"], record["split"],
                           self.root, exc)
