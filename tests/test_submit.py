"""Submission through the Ray Jobs API to a `ray start --head` cluster with token auth."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_user_error, free_port

VENV_BIN = str(Path(sys.executable).parent)
HEAD: dict = {}  # the test head's process group, for the loopback check


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A head node on 127.0.0.1 with RAY_AUTH_MODE=token; stopped by signalling --block."""
    token = secrets.token_hex(16)
    gcs, dash = free_port(), free_port()
    # multi-node clustering off, as for the embedded cluster: otherwise Ray resolves
    # 127.0.0.1 to the routable address and binds its servers to 0.0.0.0
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    proc = subprocess.Popen(
        [f"{VENV_BIN}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats",
         # every fixed default port explicit: an embedded cluster in this process
         # (other tests) already holds the defaults, e.g. the agent's 52365
         *[arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                            "--runtime-env-agent-port", "--metrics-export-port",
                            "--ray-client-server-port", "--node-manager-port",
                            "--object-manager-port") for arg in (flag, str(free_port()))]],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    import urllib.error
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # up, and asking for the token
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("ray head did not start within 120 s")
    HEAD["pid"] = proc.pid
    yield url, token
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _varbench(args, token, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = kw.pop("home", env.get("HOME", "/root"))
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([f"{VENV_BIN}/varbench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=kw.pop("timeout", 300))


@pytest.mark.slow
def test_submit_runs_the_sweep_and_status_reads_success(token_cluster, tmp_path):
    url, token = token_cluster
    db = f"sqlite:///{tmp_path / 'results.db'}"
    res = _varbench(["submit", "tests/specs/tiny.yaml", "--address", url, "--db", db,
                     "--tracking", f"sqlite:///{tmp_path / 'mlflow.db'}"], token)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "submitted varbench-tiny-" in res.stdout
    sid = res.stdout.split("submitted ")[1].split()[0]
    deadline = time.time() + 240
    status = ""
    while time.time() < deadline:
        st = _varbench(["status", sid, "--address", url], token)
        assert st.returncode == 0, st.stderr
        status = st.stdout.strip().rsplit(" ", 1)[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    assert status == "SUCCEEDED"
    # the job wrote its trials into the database we named
    from varbench.orchestrator.store import ResultsStore

    store = ResultsStore(db)
    sweep = store.sweep("tiny")
    assert sweep is not None and sweep.status == "completed"
    assert sum(len(store.trials(c.id)) for c in store.cells(sweep.id)) == 6
    # a repeated submit attaches instead of running the sweep twice
    again = _varbench(["submit", "tests/specs/tiny.yaml", "--address", url], token)
    assert again.returncode == 0 and f"attached to existing job {sid}" in again.stdout


def test_submit_without_token_is_refused(token_cluster, tmp_path):
    url, _ = token_cluster
    res = _varbench(["submit", "tests/specs/tiny.yaml", "--address", url], None,
                    home=str(tmp_path))  # no ~/.ray/auth_token either
    assert_user_error(res, "RAY_AUTH_TOKEN")


def test_unreachable_address_is_one_line(tmp_path):
    res = _varbench(["submit", "tests/specs/tiny.yaml", "--address",
                     f"http://127.0.0.1:{free_port()}"], None)
    assert_user_error(res, "cannot reach Ray")


def test_test_head_listens_on_loopback_only(token_cluster):
    """Issue 15 item 12: gcs_server, raylet and the dashboard agent bound 0.0.0.0."""
    pgid = HEAD["pid"]
    pids = {p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid}
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [ln for ln in listening.splitlines()
            if any(f"pid={p}," in ln for p in pids)]
    assert ours, listening  # the head's servers are found
    loopback = ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]")
    wide = [ln for ln in ours if ln.split()[3].rsplit(":", 1)[0] not in loopback]
    assert not wide, wide


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_doctor_checks_the_token_not_just_the_port(token_cluster, tmp_path):
    """Issue 15 item 11: doctor said "ok" for a cluster that would refuse us."""
    url, token = token_cluster
    work = ["--workdir", str(tmp_path / "work")]
    res = _varbench(["doctor", "--address", url, *work], None, home=str(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "RAY_AUTH_TOKEN" in " ".join(res.stdout.split()), res.stdout
    ok = _varbench(["doctor", "--address", url, *work], token, home=str(tmp_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
