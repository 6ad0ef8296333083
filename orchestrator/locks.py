"""A lock between processes on one host that writes nothing: ``flock`` on a directory.

Used where two drivers starting at once would both create the same local
SQLite store: our schema and Optuna's (``ResultsStore.schema_lock``) and
MLflow's (``Tracker.client``). Locking the directory that holds the file
needs no lock file, so a command refused afterwards leaves nothing behind.
The kernel drops the lock with the process, so a killed driver never leaves
it held.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on directory ``path`` (which must exist)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
