"""Connecting to Ray: an embedded local cluster by default, or ``--address``.

Ray's token authentication stays on (Ray turns it on for local clusters); we
never set RAY_AUTH_MODE=disabled. An unreachable address is one clear line
before any work.
"""

from __future__ import annotations

import inspect
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import ray

from varbench.workers.errors import UserError


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_address(address: str, field: str = "--address") -> None:
    """TCP-probe a Ray GCS (host:port) or dashboard/ray:// URL; raise UserError if down."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host:
        raise UserError(field, f"not a Ray address: {address!r} (use host:port or http://host:port)")
    if port is None:
        port = {"http": 80, "https": 443, "ray": 10001}.get(parsed.scheme, 6379)
    if not _reachable(host, port):
        raise UserError(field, f"cannot reach Ray at {host}:{port}")


def _loopback_only() -> None:
    """Keep an embedded cluster on 127.0.0.1: it serves nobody else.

    Ray resolves a loopback node address to the machine's routable one unless
    multi-node clustering is off (its default on macOS and Windows); turning
    it off for the embedded cluster keeps every Ray server on loopback.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


# start the embedded cluster as Ray would, every process included
KEEP_API_SERVER = "VARBENCH_RAY_API_SERVER"

# what a lean start replaces, with the signature it was written against (Ray 2.60):
# (owner, attribute, parameters, stand-in); a stand-in takes the same arguments
_LEAN: tuple = (
    # the API server: with include_dashboard=False Ray still starts its dashboard head
    # for one module (usage stats) and ray.init polls until it has registered
    ("node.Node", "start_api_server", ["self", "include_dashboard", "raise_on_failure"],
     "_no_api_server"),
    # the autoscaler's monitor: one node that never scales
    ("node.Node", "start_monitor", ["self"], "_nothing"),
    # the log monitor: it forwards workers' output to a driver with log_to_driver, which
    # connect never sets (task errors come back with their results)
    ("node.Node", "start_log_monitor", ["self"], "_nothing"),
    # the node's dashboard agent in its minimal form (as with plain ``pip install ray``):
    # its HTTP server and modules serve the dashboard, Jobs and State APIs, none of
    # which an embedded cluster offers
    ("utils", "get_dashboard_dependency_error", [], "_minimal_agent"),
    # waiting for the raylet to register: Ray's own wait asks the GCS once a second,
    # so a raylet that registers just after an ask costs a whole second more (a start
    # took 1.67 or 2.66 s, its get_node 1.0 or 2.0 s, five starts in a row)
    ("services", "get_node", ["gcs_address", "node_id"], "_get_node_promptly"),
)


def _no_api_server(self, *, include_dashboard, raise_on_failure):
    self._webui_url = None  # what a node without a dashboard reports


def _nothing(self) -> None:
    return None


def _minimal_agent() -> ImportError:
    return ImportError("varbench: an embedded cluster's dashboard agent runs minimal")


# while a lean start runs: the functions the stand-ins replaced, and until when
# ``_get_node_promptly`` asks before it leaves the wait to Ray's own
_REAL: dict[str, object] = {}
PROMPT_S = 10.0


def _get_node_promptly(gcs_address: str, node_id: str):
    """Ray's ``services.get_node`` once the GCS lists the node alive, asked every
    20 ms. Ray calls it again while its own 30 s wait lasts; past ``PROMPT_S`` from
    the start, or once the GCS cannot be asked, Ray's wait alone goes on (and its
    errors, as they are)."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    deadline = float(_REAL.get("deadline", 0.0))
    client = GcsClient(address=gcs_address) if time.monotonic() < deadline else None
    while client is not None and time.monotonic() < deadline:
        try:
            infos = client.get_all_node_info(timeout=2).values()
        except Exception:  # noqa: BLE001 - Ray raises several types; its own wait decides
            _REAL["deadline"] = 0.0
            break
        if any(i.node_id.hex() == node_id and i.state == GcsNodeInfo.GcsNodeState.ALIVE
               for i in infos):
            break
        time.sleep(0.02)
    return _REAL["get_node"](gcs_address, node_id)


@contextmanager
def _lean_start() -> Iterator[bool]:
    """Start an embedded cluster with only the Ray processes it uses.

    On a 2-core machine Ray's start is CPU-bound: its Python helpers import Ray
    side by side with the GCS, the raylet and the first workers (3.5 s of CPU in
    a 2.1 s ``ray.init``, 2026-11-28: dashboard agent 0.8 s, autoscaler monitor
    0.4 s, log monitor 0.4 s), and it waits on them (the API server: 1.6-1.7 s
    of a 3.7 s start). Nothing of varbench, nor of an embedded cluster's
    tasks, uses them: the dashboard, Jobs and State APIs, autoscaling and log
    forwarding are for a real cluster, which ``--address`` joins and this never
    touches. The raylet's registration is awaited more promptly too
    (``_get_node_promptly``).

    It replaces those private Ray functions for the one ``ray.init`` call, and
    only where every one has the signature this was written against (Ray
    2.60): another Ray, or ``VARBENCH_RAY_API_SERVER=1``, starts as it is.
    Yields whether it replaced them (then ``_no_dashboard_address`` follows the
    start).
    """
    from ray._private import node, services, utils

    owners = {"node.Node": node.Node, "utils": utils, "services": services}
    if _REAL:  # a lean start within one (never from connect): Ray's functions stay ours
        yield False
        return
    found = []
    for owner, attr, params, stand_in in _LEAN:
        real = getattr(owners[owner], attr, None)
        if real is None or list(inspect.signature(real).parameters) != params:
            break
        found.append((owners[owner], attr, real, globals()[stand_in]))
    if len(found) < len(_LEAN) or os.environ.get(KEEP_API_SERVER) == "1":
        yield False
        return
    _REAL.update({attr: real for _, attr, real, _ in found},
                 deadline=time.monotonic() + PROMPT_S)
    for obj, attr, _, stand_in in found:
        setattr(obj, attr, stand_in)
    try:
        yield True
    finally:
        for obj, attr, real, _ in found:
            setattr(obj, attr, real)
        _REAL.clear()


# where the embedded cluster's dashboard head is said to be when none runs: port 0, which
# nothing can listen on (a connection fails at once)
NO_DASHBOARD = "127.0.0.1:0"


def _no_dashboard_address() -> None:
    """Tell the node's dashboard agent where a dashboard head would be, after a start
    without one. Its event reporter reads that address before it waits for events,
    and without it retries once a second forever, logging an error with a traceback
    each time (12 KB in 12 s of ``dashboard_agent.log``, measured). With an address
    it waits quietly; an embedded sweep writes no Ray events, and one that did would
    fail to reach port 0 at once, as it would reach no dashboard anyway."""
    from ray._private import ray_constants

    ray.experimental.internal_kv._internal_kv_put(
        ray_constants.DASHBOARD_ADDRESS, NO_DASHBOARD,
        namespace=ray_constants.KV_NAMESPACE_DASHBOARD)


def _node_addresses(address: str, timeout_s: float) -> list[tuple[str, int]]:
    """(advertised address, raylet port) of every live node, asked of the GCS."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    infos = GcsClient(address=address).get_all_node_info(timeout=timeout_s).values()
    return [(i.node_manager_address, i.node_manager_port) for i in infos
            if i.state == GcsNodeInfo.GcsNodeState.ALIVE]


def check_advertised(address: str, timeout_s: float = 10.0) -> None:
    """A GCS that answers on ``address`` may advertise its nodes at addresses this
    machine cannot reach (a head started with another --node-ip-address, an SSH
    tunnel); ``ray.init`` would then hang for minutes. Refuse in one line naming
    them instead."""
    try:
        nodes = _node_addresses(address, timeout_s)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError("--address", f"the Ray GCS at {address} did not answer within "
                        f"{timeout_s:g} s ({first})") from None
    if not nodes or any(_reachable(host, port, timeout=3.0) for host, port in nodes):
        return
    shown = ", ".join(sorted({f"{h}:{p}" for h, p in nodes}))
    raise UserError("--address", f"the cluster at {address} advertises its nodes at {shown}, "
                    "which this machine cannot reach; run from a machine on the cluster's "
                    "network, or submit through the Jobs API instead (varbench submit "
                    "--address http://HEAD:8265)")


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process."""
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        _loopback_only()
        with _lean_start() as lean:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=True, logging_level="ERROR",
                     _node_ip_address="127.0.0.1")
        if lean:
            _no_dashboard_address()
        return
    check_address(address)
    if "://" not in address and address != "auto":
        check_advertised(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError) as exc:
        raise UserError("--address", f"cannot join Ray at {address} ({exc})") from None


def shutdown() -> None:
    """Leave Ray now: an embedded cluster stops, a joined one is only left. At the
    interpreter's exit Ray's own hook does this too, but first sleeps 0.5 s for log
    output and then gives each of its processes up to a second to end. The call
    takes 0.3 s after a quick sweep (2026-11-28); the rest of ``varbench run``'s
    exit is the interpreter's (``cli._exit_quickly``)."""
    if ray.is_initialized():
        ray.shutdown()


def capacity(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials fit the cluster at once."""
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial > 0:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    return max(1, slots)



def check_fits(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Refuse, in one line before the first trial, a request no node of the cluster
    can ever meet (it would wait forever, trials left RUNNING).

    Counted per node, as Ray schedules a task on one node. An autoscaling cluster
    whose workers are not up yet can be let through with
    ``VARBENCH_ALLOW_PENDING=1``.
    """
    import os

    if os.environ.get("VARBENCH_ALLOW_PENDING") == "1":
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus_per_trial and n.get("GPU", 0) >= gpus_per_trial
           for n in nodes):
        return
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    raise UserError("resources", f"a trial asks for {cpus_per_trial:g} CPU and "
                    f"{gpus_per_trial:g} GPU, but the largest node has {most_cpu:g} CPU and "
                    f"{most_gpu:g} GPU; lower resources.cpus / resources.gpus (on an "
                    "autoscaling cluster, set VARBENCH_ALLOW_PENDING=1)")
