"""The embedded cluster starts with only the Ray processes it uses, and only where
that is safe (``cluster._lean_start``)."""

from __future__ import annotations

import pytest
from ray._private import node as ray_node
from ray._private import ray_constants
from ray._private import utils as ray_utils

from varbench.orchestrator import cluster


def test_the_embedded_cluster_is_lean_and_runs_tasks(ray_local):
    ray = ray_local
    head = ray._private.worker.global_worker.node
    for gone in (ray_constants.PROCESS_TYPE_DASHBOARD, ray_constants.PROCESS_TYPE_MONITOR,
                 ray_constants.PROCESS_TYPE_LOG_MONITOR):
        assert gone not in head.all_processes
    assert ray_constants.PROCESS_TYPE_RAYLET in head.all_processes
    raylet = head.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    agent = next(a for a in raylet.args if a.startswith("--dashboard_agent_command="))
    assert "--minimal" in agent

    @ray.remote(num_cpus=1)
    def double(x: int) -> int:
        return 2 * x

    assert ray.get([double.remote(i) for i in range(4)]) == [0, 2, 4, 6]

    @ray.remote(num_cpus=1)
    def env(name: str) -> str | None:
        import os

        return os.environ.get(name)

    # the runtime-env agent stays: the driver's fault injection sends env_vars this way
    assert ray.get(env.options(runtime_env={"env_vars": {"VB_T": "x"}}).remote("VB_T")) == "x"
    # Ray's own functions are back after the start
    assert all(_current()[a] is not getattr(cluster, stand_in)
               for _, a, _, stand_in in cluster._LEAN)
    assert not cluster._REAL


def test_the_dashboard_agent_does_not_retry_forever(ray_local):
    """Without the address its event reporter logs an error with a traceback once a
    second for as long as the cluster runs; with the placeholder, only its first
    attempt (before ``ray.init`` returned) can have failed."""
    import time
    from pathlib import Path

    ray = ray_local
    got = ray.experimental.internal_kv._internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    assert got.decode() == cluster.NO_DASHBOARD
    log = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "dashboard_agent.log"
    time.sleep(3)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert text.count("Get dashboard http address failed") <= 1


def _owners():
    from ray._private import services

    return {"node.Node": ray_node.Node, "utils": ray_utils, "services": services}


def _current() -> dict[str, object]:
    return {attr: getattr(_owners()[owner], attr) for owner, attr, *_ in cluster._LEAN}


def test_replaced_only_for_the_start_even_when_it_fails():
    real = _current()
    with cluster._lean_start() as lean:
        assert lean
        assert all(_current()[a] is getattr(cluster, stand_in)
                   for _, a, _, stand_in in cluster._LEAN)
        assert cluster._REAL["get_node"] is real["get_node"]
    assert _current() == real and not cluster._REAL
    try:
        with cluster._lean_start():
            raise RuntimeError("ray.init failed")
    except RuntimeError:
        pass
    assert _current() == real and not cluster._REAL


def test_a_lean_start_within_one_leaves_the_outer_in_charge():
    real = _current()
    with cluster._lean_start() as outer:
        with cluster._lean_start() as inner:
            assert outer and not inner
        assert cluster._REAL["get_node"] is real["get_node"]  # not a stand-in: no recursion
    assert _current() == real and not cluster._REAL


@pytest.mark.parametrize("entry", [e[:2] for e in cluster._LEAN], ids=lambda e: e[1])
def test_nothing_is_replaced_where_one_signature_changed(monkeypatch, entry):
    owner, attr = entry

    def other_ray(*args, new_arg=None):
        pass  # a Ray where this one changed

    monkeypatch.setattr(_owners()[owner], attr, other_ray)
    real = _current()
    with cluster._lean_start() as lean:
        assert not lean
        assert _current() == real


class _FakeGcs:
    """What ``GcsClient`` answers: the node alive from the third ask on, or an error."""

    asks = 0

    def __init__(self, address: str, fail: bool = False):
        self.fail = fail

    def get_all_node_info(self, timeout=None):
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        if self.fail:
            raise RuntimeError("GCS gone")
        _FakeGcs.asks += 1
        info = GcsNodeInfo(node_id=bytes.fromhex("ab" * 28),
                           state=GcsNodeInfo.GcsNodeState.ALIVE if _FakeGcs.asks >= 3
                           else GcsNodeInfo.GcsNodeState.DEAD)
        return {"n": info}


def test_the_prompt_wait_asks_until_the_node_is_alive_then_asks_ray(monkeypatch):
    import ray._raylet

    calls = []
    _FakeGcs.asks = 0
    monkeypatch.setattr(ray._raylet, "GcsClient", _FakeGcs)
    monkeypatch.setitem(cluster._REAL, "get_node", lambda a, n: calls.append((a, n)) or "info")
    monkeypatch.setitem(cluster._REAL, "deadline", cluster.time.monotonic() + 5)
    assert cluster._get_node_promptly("127.0.0.1:1", "ab" * 28) == "info"
    assert _FakeGcs.asks == 3 and calls == [("127.0.0.1:1", "ab" * 28)]


def test_the_prompt_wait_leaves_a_gcs_it_cannot_ask_to_rays_own_wait(monkeypatch):
    import ray._raylet

    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: _FakeGcs(address, fail=True))
    monkeypatch.setitem(cluster._REAL, "get_node", lambda a, n: "ray's answer")
    monkeypatch.setitem(cluster._REAL, "deadline", cluster.time.monotonic() + 5)
    assert cluster._get_node_promptly("127.0.0.1:1", "cd" * 28) == "ray's answer"
    assert cluster._REAL["deadline"] == 0.0  # later calls go straight to Ray's wait
    _FakeGcs.asks = 0
    monkeypatch.setattr(ray._raylet, "GcsClient", _FakeGcs)
    assert cluster._get_node_promptly("127.0.0.1:1", "cd" * 28) == "ray's answer"
    assert _FakeGcs.asks == 0


def test_an_environment_variable_keeps_it(monkeypatch):
    monkeypatch.setenv(cluster.KEEP_API_SERVER, "1")
    real = ray_node.Node.start_api_server
    with cluster._lean_start() as lean:
        assert not lean
        assert ray_node.Node.start_api_server is real
