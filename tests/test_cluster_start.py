"""The embedded cluster starts without Ray's API server, and only where that is safe."""

from __future__ import annotations

from ray._private import node as ray_node
from ray._private import ray_constants

from varbench.orchestrator import cluster


def test_the_embedded_cluster_has_no_api_server_and_runs_tasks(ray_local):
    ray = ray_local
    head = ray._private.worker.global_worker.node
    assert ray_constants.PROCESS_TYPE_DASHBOARD not in head.all_processes
    assert ray_constants.PROCESS_TYPE_RAYLET in head.all_processes

    @ray.remote(num_cpus=1)
    def double(x: int) -> int:
        return 2 * x

    assert ray.get([double.remote(i) for i in range(4)]) == [0, 2, 4, 6]
    # Ray's own method is back after the start
    assert ray_node.Node.start_api_server.__name__ == "start_api_server"


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


def test_replaced_only_for_the_start_and_only_with_the_known_signature(monkeypatch):
    real = ray_node.Node.start_api_server
    with cluster._without_api_server():
        assert ray_node.Node.start_api_server is not real
    assert ray_node.Node.start_api_server is real

    def other_ray(self, *, include_dashboard, raise_on_failure, new_arg=None):
        pass  # a Ray whose method changed: left alone

    monkeypatch.setattr(ray_node.Node, "start_api_server", other_ray)
    with cluster._without_api_server():
        assert ray_node.Node.start_api_server is other_ray


def test_an_environment_variable_keeps_it(monkeypatch):
    monkeypatch.setenv(cluster.KEEP_API_SERVER, "1")
    real = ray_node.Node.start_api_server
    with cluster._without_api_server():
        assert ray_node.Node.start_api_server is real
