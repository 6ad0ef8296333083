"""One driver per sweep: a lease in the results store, kept alive by a heartbeat.

A driver takes the sweep's lease before it touches the sweep (before the
recovery of trials a dead driver left RUNNING), renews it every
``ttl / 4`` seconds from a background thread, and releases it when it ends.
A second driver on the same sweep is refused in one line naming the holder,
or, with ``--wait-lock``, waits until the lease is free. A lease is free when
released, when its expiry passed without a heartbeat (a driver on another
host that died), or at once when its holder was a process on this host that
no longer exists (a SIGKILLed driver). So the recovery that follows touches
only trials whose owner's lease has expired.

``VARBENCH_LEASE_TTL`` sets the expiry in seconds (default 60).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from varbench.orchestrator.store import Holder, ResultsStore
from varbench.workers.errors import UserError

log = logging.getLogger("varbench.lease")
DEFAULT_TTL_S = 60.0
WAIT_POLL_S = 1.0


def lease_ttl() -> float:
    raw = os.environ.get("VARBENCH_LEASE_TTL", "")
    try:
        ttl = float(raw) if raw else DEFAULT_TTL_S
    except ValueError:
        raise UserError("VARBENCH_LEASE_TTL", f"not a number of seconds: {raw!r}") from None
    if not ttl > 0:
        raise UserError("VARBENCH_LEASE_TTL", f"must be positive, got {raw!r}")
    return ttl


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """The lease of one sweep held by this driver."""

    def __init__(self, store: ResultsStore, sweep: str, ttl_s: float | None = None):
        self.store, self.sweep = store, sweep
        self.ttl = ttl_s if ttl_s is not None else lease_ttl()
        self.owner = new_owner()
        self.lost: str | None = None  # set by the heartbeat when another driver took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: bool = False, on_wait: Callable[[Holder], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> None:
        """Take the lease, or raise UserError naming its holder (``wait``: poll until
        free; KeyboardInterrupt once ``cancelled()`` says so)."""
        told = False
        while True:
            if cancelled():
                raise KeyboardInterrupt
            holder = self.store.take_lease(self.sweep, self.owner, self.ttl)
            if holder is None:
                break
            if not wait:
                raise UserError("sweep", f"{self.sweep!r} is already running: its lease is held by "
                                f"{holder.describe()}; wait for it with --wait-lock, or stop that driver")
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            time.sleep(WAIT_POLL_S)
        self._thread = threading.Thread(target=self._beat, name="varbench-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.store.renew_lease(self.sweep, self.owner, self.ttl):
                    held = self.store.lease(self.sweep)
                    self.lost = held.describe() if held else "nobody (it was released)"
                    log.error("lease on sweep %s lost; now held by %s", self.sweep, self.lost)
                    return
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("lease heartbeat failed (%s); retrying", type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lost is None:
            try:
                self.store.release_lease(self.sweep, self.owner)
            except Exception as exc:  # noqa: BLE001 - it expires on its own
                log.warning("could not release the lease (%s); it expires in %.0f s",
                            type(exc).__name__, self.ttl)
