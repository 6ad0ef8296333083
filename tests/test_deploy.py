"""Every deploy file parses, and what must agree with the project does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"varbench/varbench:{VERSION}"
NIGHTLY = "varbench nightly --spec sweeps/nightly.yaml"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_every_yaml_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        assert _docs(f), f


def test_images_match_the_project_version():
    images = set()
    for f in list((DEPLOY / "kuberay").glob("*.yaml")) + [DEPLOY / "ray-cluster.yaml"]:
        for node in _walk(_docs(f)):
            if "image" in node and isinstance(node["image"], str):
                images.add(node["image"])
    assert images == {IMAGE}
    assert f"-t {IMAGE}" in (DEPLOY / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in (DEPLOY / "Dockerfile").read_text()


def test_entrypoints_run_the_nightly_spec_that_exists():
    assert (ROOT / "sweeps" / "nightly.yaml").exists()
    entry = {
        "rayjob": _docs(DEPLOY / "kuberay" / "rayjob-nightly.yaml")[0]["spec"]["entrypoint"],
        "raycronjob": _docs(DEPLOY / "kuberay" / "raycronjob-nightly.yaml")[0]["spec"]["jobTemplate"]["entrypoint"],
        "cronjob": " ".join(_docs(DEPLOY / "kuberay" / "cronjob-nightly.yaml")[0]["spec"]["jobTemplate"]
                            ["spec"]["template"]["spec"]["containers"][0]["command"]),
    }
    unit = (DEPLOY / "systemd" / "varbench-nightly.service").read_text()
    entry["systemd"] = re.search(r"^ExecStart=\S*/(varbench .*)$", unit, re.M).group(1)
    for name, cmd in entry.items():
        assert cmd.startswith(NIGHTLY), (name, cmd)
    # the console script the entrypoints call is the one the package installs
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["varbench"] == "varbench.orchestrator.cli:main"
    timer = (DEPLOY / "systemd" / "varbench-nightly.timer").read_text()
    assert "Unit=varbench-nightly.service" in timer and "OnCalendar=" in timer


def test_ports_and_bindings_agree():
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    env = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    mlflow_port = re.search(r":(\d+)$", env["VARBENCH_TRACKING_URI"]).group(1)
    pg_port = re.search(r"@[^:/]+:(\d+)/", env["VARBENCH_DB_URL"]).group(1)
    command = compose["mlflow"]["command"]
    # inside the compose network: the port the MLflow server listens on, and the
    # port it reaches the postgres service on, are the two containers' ports
    mlflow_inner = re.search(r"mlflow server .*--port (\d+)", command, re.S).group(1)
    pg_inner = re.search(r"@postgres:(\d+)/", command).group(1)
    # the host publishes each on loopback only, at the port env.example points varbench to
    assert compose["mlflow"]["ports"] == [f"127.0.0.1:{mlflow_port}:{mlflow_inner}"]
    assert compose["postgres"]["ports"] == [f"127.0.0.1:{pg_port}:{pg_inner}"]


def test_token_auth_on_and_no_secrets_in_files():
    for f in (DEPLOY / "kuberay").glob("*.yaml"):
        doc = _docs(f)[0]
        if doc["kind"] in ("RayCluster", "RayJob", "RayCronJob"):
            assert any(n.get("authOptions") == {"mode": "token"} for n in _walk(doc)), f
        for node in _walk(doc):
            if node.get("name") == "RAY_AUTH_TOKEN":
                assert "valueFrom" in node and "value" not in node, f
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    assert "RAY_AUTH_MODE=disabled" not in text
    assert not re.search(r"postgresql://\w+:(?!change-me|\$|\.\.\.)[^@\s]+@", text)
