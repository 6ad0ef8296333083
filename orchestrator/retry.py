"""One retry rule for every database call: the results store and Optuna's storage.

A dropped connection (server restart, ``pg_terminate_backend``, failover)
surfaces as one of ``TRANSIENT``; the call is repeated with exponential
back-off, 0.2 s doubling, ``DB_ATTEMPTS`` times in all (about 6 s). Callers
make repeats harmless: a store write is one transaction (rolled back when the
connection dies), Optuna tells use ``skip_if_finished`` and enqueues check
first.
Errors no repeat can mend (``PERMANENT``: a missing table, a malformed file)
are raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import InterfaceError, OperationalError

T = TypeVar("T")
TRANSIENT = (OperationalError, InterfaceError, StorageInternalError)
# errors of those types that no retry can mend: a missing table, a damaged file
PERMANENT = ("no such table", "malformed", "file is not a database", "unable to open database",
             "does not exist")


def transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) and not any(p in str(exc).lower() for p in PERMANENT)
DB_ATTEMPTS = 6
BACKOFF_S = 0.2


def retry(fn: Callable[[], T], *, attempts: int = DB_ATTEMPTS,
          on_retry: Callable[[], None] | None = None) -> T:
    """``fn()``, repeated while it raises a transient database error.

    ``on_retry`` runs before each repeat (e.g. to roll back, or to settle what
    a half-done call left behind); the last failure is re-raised.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except TRANSIENT as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            time.sleep(BACKOFF_S * 2**attempt)
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")
