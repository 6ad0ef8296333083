"""The embedded cluster starts with only the Ray processes it uses, and only where
that is safe (``cluster._lean_start``)."""

from __future__ import annotations

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
    assert ray_node.Node.start_api_server.__name__ == "start_api_server"
    assert ray_node.Node.start_monitor.__name__ == "start_monitor"
    assert ray_utils.get_dashboard_dependency_error.__name__ == "get_dashboard_dependency_error"


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


def test_replaced_only_for_the_start_and_only_with_the_known_signatures(monkeypatch):
    real = ray_node.Node.start_api_server, ray_node.Node.start_log_monitor
    with cluster._lean_start() as lean:
        assert lean
        assert ray_node.Node.start_api_server is not real[0]
        assert ray_node.Node.start_log_monitor is not real[1]
    assert (ray_node.Node.start_api_server, ray_node.Node.start_log_monitor) == real

    def other_ray(self, timeout=None):
        pass  # a Ray where one of them changed: nothing is replaced

    monkeypatch.setattr(ray_node.Node, "start_monitor", other_ray)
    with cluster._lean_start() as lean:
        assert not lean
        assert ray_node.Node.start_monitor is other_ray
        assert ray_node.Node.start_api_server is real[0]


def test_an_environment_variable_keeps_it(monkeypatch):
    monkeypatch.setenv(cluster.KEEP_API_SERVER, "1")
    real = ray_node.Node.start_api_server
    with cluster._lean_start() as lean:
        assert not lean
        assert ray_node.Node.start_api_server is real
