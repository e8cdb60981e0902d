"""Per-example correctness kept in the store, so that no mixture is evaluated twice on a split.

An own adapter's, the soup's or a cross head's accuracy on a split does not depend on the
search that asks for it: every search of a store, every plan and every confirmation needs the
same few baselines. Each evaluation the confirmation trials make is written to
``<store>/.correctness/<fingerprint>.json``, fingerprinted by everything its 0/1 list depends
on: the mixture (its canonical spec), the split, the files of every adapter it reads (members,
and the targets' heads), the files of its targets' data, and the settings that shape the rows
and the model (base model, adapter method, training section, evaluation dtype, LoRA merge,
and on test the black-box attack). A retrained adapter or an edited data file changes the
fingerprint; deleting the folder forgets everything. Files are written whole (a temporary
name, then a rename), so a crash leaves either the record or nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from trainables.correctness import BLACKBOX_TEST

if TYPE_CHECKING:
    from search.config import Config
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
    """Reads and writes the per-example correctness of ``cfg``'s store, one file per (mixture, split)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = Path(cfg.store_path) / CORRECTNESS_DIR
        self._stamps: dict[str, list | None] = {}

    def _stamp(self, path) -> list | None:
        key = str(path)
        if key not in self._stamps:
            self._stamps[key] = _folder_stamp(path)
        return self._stamps[key]

    def fingerprint(self, spec: MixtureSpec, split: str) -> str:
        cfg = self.cfg
        involved = sorted(set(spec.members) | set(spec.targets))
        domains = {d: {"settings": cfg.domains[d].model_dump(), "data": self._stamp(cfg.domains[d].path),
                       "store": self._stamp(Path(cfg.store_path) / d)}
                   for d in involved if d in cfg.domains}
        search = cfg.search
        parts = {"spec": spec.canonical(), "split": split, "base_model": cfg.base_model,
                 "adapter": cfg.adapter.model_dump(), "training": cfg.training.model_dump(), "domains": domains,
                 "dtype": search.eval_dtype, "lora_merge": search.lora_merge,
                 "blackbox": (search.blackbox_attack.model_dump()
                              if search.blackbox_attack is not None and split == "test" else None)}
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def read(self, spec: MixtureSpec, split: str) -> dict | None:
        """``{split: {target: [0/1 ...]}}`` (and the black-box entry on test when attacked), or None."""
        path = self.root / f"{self.fingerprint(spec, split)}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        entry = record.get("correct", {})
        if set(entry.get(split, {})) < set(spec.targets):
            return None
        if self.cfg.search.blackbox_attack is not None and split == "test" and BLACKBOX_TEST not in entry:
            return None
        return entry

    def write(self, spec: MixtureSpec, per_split: Mapping[str, Mapping]) -> None:
        """Keep each whole split of one mixture's evaluation (best effort: a read-only store is not an error)."""
        for split, correct in per_split.items():
            if split == BLACKBOX_TEST or not set(spec.targets) <= set(correct):
                continue  # only a whole split is kept (a failed part's targets are missing)
            entry = {split: correct}
            if split == "test" and BLACKBOX_TEST in per_split:
                entry[BLACKBOX_TEST] = per_split[BLACKBOX_TEST]
            record = {"label": spec.label(), "split": split, "correct": entry}
            tmp = None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f)
                os.replace(tmp, self.root / f"{self.fingerprint(spec, split)}.json")
            except OSError as exc:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
                logger.warning("could not keep the evaluation of %s on %s in %s (%s)", spec.label(), split,
                               self.root, exc)
