"""Submitting a sweep to a Ray cluster through the Ray Jobs API.

The submission id is derived from the sweep (name and spec hash), so a
repeated submit of the same spec attaches to the job already there instead
of running it twice. The working directory ships as the job's runtime
environment, and the varbench code this client runs ships beside it as a
``varbench`` module (``py_modules``), so the job runs the same code whether
varbench is installed here from a wheel or editable. Database and tracking URLs
never travel on the (visible) entrypoint. One without credentials travels as a
runtime_env environment variable; one with a password travels in a file,
``varbench/_secrets.json`` inside the shipped ``py_modules`` package (stored by
Ray in its GCS package store, not in the job's metadata), and the job is told
only ``VARBENCH_SECRETS=shipped``: ``varbench`` reads the file into its own
environment at start-up and deletes it. So ``ray job list``, the dashboard and
the runtime_env agent's log show no password. Ray's token is read by Ray's own
client from RAY_AUTH_TOKEN or ~/.ray/auth_token; we never turn authentication off.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from varbench.orchestrator.errors import RunFailed
from varbench.sweeps.redact import has_secret
from varbench.workers.errors import UserError

if TYPE_CHECKING:  # the CLI imports this module at start-up: no pydantic, no torch
    from varbench.sweeps.spec import SweepSpec

EXCLUDES = [".venv", ".git", "varbench-work", "mlruns", "mlartifacts", "*.db", "__pycache__",
            ".pytest_cache", ".ruff_cache", ".hypothesis"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SECRETS_FILE = "_secrets.json"  # inside the shipped varbench package
SECRETS_FLAG = "VARBENCH_SECRETS"


def ship_env(env: dict[str, str], package: Path) -> dict[str, str]:
    """The runtime_env env vars for ``env``: values holding a password go into a
    file in the shipped package instead (see the module docstring)."""
    secret = {k: v for k, v in env.items() if has_secret(v)}
    visible = {k: v for k, v in env.items() if k not in secret}
    if secret:
        path = package / SECRETS_FILE
        path.write_text(json.dumps(secret))
        path.chmod(0o600)
        visible[SECRETS_FLAG] = "shipped"
    return visible


def load_shipped_secrets(path: Path | None = None) -> None:
    """In a submitted job: read the shipped credentials into this process's
    environment and delete the file. Does nothing elsewhere."""
    if os.environ.get(SECRETS_FLAG) != "shipped":
        return
    if path is None:
        import varbench.orchestrator

        path = Path(varbench.orchestrator.__file__).resolve().parent.parent / SECRETS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # already read (and deleted) by this job's first varbench process
    os.environ.update({k: str(v) for k, v in data.items()})
    try:
        path.unlink()
    except OSError:
        pass


@dataclass
class Submission:
    submission_id: str
    status: str
    attached: bool  # True when the job already existed


def submission_id(spec: SweepSpec) -> str:
    return f"varbench-{spec.name}-{spec.spec_hash()[:12]}"


def dashboard_url(address: str) -> str:
    return address if "://" in address else f"http://{address}"


def use_token_if_given() -> None:
    """Ray's client sends a token only in token mode: turn it on when we hold one.

    Ray reads the mode once, so the CLI calls this before Ray is imported.
    """
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and \
            not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    from varbench.orchestrator.cluster import check_address

    url = dashboard_url(address)
    check_address(url)
    use_token_if_given()
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = "; set RAY_AUTH_TOKEN to the cluster's token" if "token" in first.lower() else ""
        raise UserError("--address", f"cannot use the Ray Jobs API at {url} ({first}){hint}") from None


def job_status(c, sid: str) -> str | None:
    try:
        return str(c.get_job_status(sid).value)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc).lower():
            return None
        raise


def stage_package(into: Path) -> Path:
    """Copy the running ``varbench`` sub-packages into ``into/varbench`` for ``py_modules``.

    The repository keeps models/, workers/, sweeps/ and orchestrator/ at its top
    and maps them into the namespace at install time; a cluster gets them under
    the one name the code imports.
    """
    import varbench.models
    import varbench.orchestrator
    import varbench.sweeps
    import varbench.workers

    root = into / "varbench"
    for pkg in (varbench.models, varbench.orchestrator, varbench.sweeps, varbench.workers):
        name = pkg.__name__.rsplit(".", 1)[1]
        shutil.copytree(Path(pkg.__file__).parent, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def submit(
    spec: SweepSpec,
    spec_path: Path,
    address: str,
    working_dir: Path,
    env: dict[str, str] | None = None,
    agent_wait_s: float = 90.0,
) -> Submission:
    spec_path = spec_path.resolve()
    working_dir = working_dir.resolve()
    try:
        rel = spec_path.relative_to(working_dir)
    except ValueError:
        raise UserError("SPEC", f"{spec_path} is outside the working directory {working_dir}") from None
    c = client(address)
    sid = submission_id(spec)
    existing = job_status(c, sid)
    if existing is not None:
        return Submission(sid, existing, attached=True)
    deadline = time.monotonic() + agent_wait_s
    with tempfile.TemporaryDirectory(prefix="varbench-submit-") as tmp:
        package = stage_package(Path(tmp))
        env_vars = ship_env(dict(env or {}), package)
        while True:
            try:
                c.submit_job(
                    entrypoint=f"python -m varbench.orchestrator.cli run {rel.as_posix()} "
                               "--address auto",
                    submission_id=sid,
                    runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES,
                                 "py_modules": [str(package)],
                                 "env_vars": env_vars},
                    metadata={"varbench.sweep": spec.name,
                              "varbench.spec_hash": spec.spec_hash()},
                )
                break
            except RuntimeError as exc:
                # a head node that just started has a dashboard before its job agent
                if "try again later" not in str(exc) or time.monotonic() > deadline:
                    raise RunFailed(f"the Ray Jobs API refused the submission: {exc}") from None
                time.sleep(2)
    return Submission(sid, job_status(c, sid) or "PENDING", attached=False)


def follow(address: str, sid: str, echo: Callable[[str], None], poll_s: float = 1.0,
           timeout_s: float | None = None) -> str:
    """Print the job's new log lines until it ends; return its final status."""
    c = client(address)
    seen = 0
    start = time.monotonic()
    while True:
        status = job_status(c, sid) or "UNKNOWN"
        logs = c.get_job_logs(sid)
        if len(logs) > seen:
            for line in logs[seen:].splitlines():
                echo(line)
            seen = len(logs)
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return status
        time.sleep(poll_s)
