"""`varbench doctor` as a library call: versions, GPU, and whether each address answers.

Every check reads; none writes (no experiment, run or table is created).
"""

from __future__ import annotations

import importlib.metadata as md
import platform
from collections.abc import Callable
from dataclasses import dataclass

from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import ResultsView, mask_url, sqlite_path
from varbench.workers.errors import UserError

PACKAGES = ("torch", "ray", "optuna", "mlflow", "sqlalchemy", "typer", "pydantic")


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    ok: bool = True


def versions() -> list[Check]:
    import torch

    out = [Check("python", platform.python_version())]
    for pkg in PACKAGES:
        try:
            out.append(Check(pkg, md.version(pkg)))
        except md.PackageNotFoundError:
            out.append(Check(pkg, "missing"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU trials)"
    out.append(Check("GPU", gpu))
    return out


def _probe(name: str, fn: Callable[[], None]) -> Check:
    try:
        fn()
    except UserError as exc:
        return Check(name, f"FAILED: {exc.problem}", ok=False)
    return Check(name, "ok")


def _missing_sqlite(url: str) -> bool:
    """A local SQLite store not created yet: checking it would create it."""
    if not url.startswith("sqlite"):
        return False
    try:
        path = sqlite_path(url)
    except Exception:  # noqa: BLE001 - a malformed URL is the probe's to report
        return False
    return path is not None and not path.exists()


def _results_store(settings: Settings) -> Check:
    name = f"results store {mask_url(settings.db_url)}"
    if _missing_sqlite(settings.db_url):
        return Check(name, "ok (no store yet: the first sweep creates it)")
    view = ResultsView(settings.db_url)
    try:
        view.check()
    except UserError as exc:
        if "no varbench results" in exc.problem:
            return Check(name, "ok (reachable; no varbench tables yet: the first sweep creates them)")
        return Check(name, f"FAILED: {exc.problem}", ok=False)
    return Check(name, "ok")


def _tracking_store(settings: Settings) -> Check:
    """A read of the tracking store; a local SQLite one that is not there yet is not
    created (MLflow's client would create it, with its tables, on first use)."""
    from varbench.orchestrator.tracking import Tracker

    name = f"MLflow {mask_url(settings.tracking_uri)}"
    if _missing_sqlite(settings.tracking_uri):
        return Check(name, "ok (no store yet: the first sweep creates it)")
    return _probe(name, lambda: Tracker(settings.tracking_uri, "").check())


def reachability(settings: Settings, address: str | None = None) -> list[Check]:
    """The results store, the MLflow store and (if given) the Ray cluster."""

    out = [_results_store(settings), _tracking_store(settings)]
    if address:
        out.append(_probe(f"Ray {address}", lambda: _check_ray(address)))
    return out


def _check_ray(address: str) -> None:
    """The port answers and, for a Jobs API (dashboard) address, it accepts us: a
    cluster with token authentication refuses a client without the token."""
    from urllib.parse import urlparse

    from varbench.orchestrator.cluster import check_address

    check_address(address)
    if urlparse(address).scheme in ("http", "https"):
        from varbench.orchestrator.submit import client

        client(address).list_jobs()


def run_checks(settings: Settings, address: str | None = None) -> list[Check]:
    return versions() + reachability(settings, address)
