"""Where a search keeps its Optuna study: a journal file the driver appends to.

Optuna's journal storage keeps the study in memory and appends each change to a file, so an
ask costs what it costs in memory: 3-8 ms up to 1,000 finished trials, against 15-22 ms for
SQLite in WAL mode and more with SQLite's default journal (BENCHMARKS.md, "Driver scale").
"""

from __future__ import annotations

import json
import os

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from mlflow_server.network import sqlite_path, use_wal


class UnsyncedJournalFile(JournalFileBackend):
    """Optuna's journal file without an fsync per record.

    Records are appended under Optuna's file lock, as ``JournalFileBackend.append_logs``
    does, less its ``os.fsync``: an application crash loses nothing (the kernel has the
    bytes), a power loss at most the last records, which a resumed search asks again.
    """

    def __init__(self, path: str) -> None:
        self.path, self.lock = path, JournalFileSymlinkLock(path)  # Optuna's default lock, held here
        super().__init__(path, lock_obj=self.lock)

    def append_logs(self, logs: list[dict]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        self.lock.acquire()
        try:
            with open(self.path, "ab") as fh:
                fh.write(text.encode("utf-8"))
        finally:
            self.lock.release()


def study_storage(location: str | None):
    """Optuna's storage for a study at ``location``.

    - None: in memory (unit tests, ablations);
    - a path ending in ``.journal``: the journal file above, what a search uses;
    - a SQLite URL (the ``optuna.db`` of searches started before the journal): WAL mode
      without a sync per commit;
    - any other URL: as Optuna reads it.
    """
    if location is None:
        return None
    if location.endswith(".journal"):
        drop_torn_record(location)
        return optuna.storages.JournalStorage(UnsyncedJournalFile(location))
    if sqlite_path(location) is None:
        return location
    use_wal(sqlite_path(location))
    return optuna.storages.RDBStorage(location)


def drop_torn_record(path: str) -> None:
    """Cut a last record without its newline (a power loss mid-write). Appended to, it would
    make the next record unreadable, and the study with it."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
