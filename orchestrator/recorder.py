"""The single writer: every write to the results store and to MLflow goes through here.

Workers compute and return; the driver decides; the recorder writes. It
holds the only ``ResultsStore`` (the writing one) and the ``Tracker`` of a
sweep, and shapes what they receive (rows, MLflow payloads, report
artifacts, nightly rows), so no other module assembles a write. Read-only
commands get a ``ResultsView`` instead, which has no write methods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from varbench.orchestrator.lease import Lease
from varbench.orchestrator.settings import Settings, check_workdir
from varbench.orchestrator.store import Holder, ResultsStore, TrialRow, mask_url, sqlite_path
from varbench.orchestrator.tracking import Tracker, git_commit
from varbench.sweeps.frontier import FrontierPoint, frontier
from varbench.sweeps.spec import ModelVariant, SweepSpec

T = TypeVar("T")
TRIAL_METRICS = ("err", "err_ucb", "rel_err", "n_params", "flops", "steps_run", "seconds",
                 "sec_per_step")


def experiment_name(sweep: str) -> str:
    return f"varbench/{sweep}"


def _creates_file(url: str) -> bool:
    """Whether checking ``url`` creates it: a local SQLite file not there yet."""
    try:
        path = sqlite_path(url) if url.startswith("sqlite") else None
    except Exception:  # noqa: BLE001 - malformed: its own check refuses it
        return False
    return path is not None and not path.exists()


class Recorder:
    """Writes one sweep's results: store rows first, then MLflow."""

    def __init__(self, settings: Settings, sweep: str, tags: dict[str, str] | None = None):
        self.settings = settings
        self.sweep = sweep
        self.tags = dict(tags or {})
        self.store = ResultsStore(settings.db_url)
        self.tracker = Tracker(settings.tracking_uri, experiment_name(sweep),
                               artifact_root=settings.artifact_root)
        self.commit = git_commit()
        self.sweep_id: int | None = None
        self.lease: Lease | None = None

    def check(self) -> None:
        """The work directory usable and both stores reachable, before anything is
        written. A local SQLite store not created yet is not opened here (that
        would create it): its directory must be creatable, and the sweep's set-up
        creates it once every other check (Ray, resources) has passed."""
        check_workdir(self.settings.workdir)  # artifacts and the default stores live there
        for url, check, flag in ((self.settings.db_url, self.store.check, "--db"),
                                 (self.settings.tracking_uri, self.tracker.check, "--tracking")):
            if _creates_file(url):
                check_workdir(sqlite_path(url).parent, flag)
            else:
                check()

    # --- a sweep's start -------------------------------------------------------

    def set_up_schema(self, also: Callable[[], T]) -> T:
        """Bring our tables to head and run ``also`` (Optuna's own set-up) under one
        schema lock: concurrent drivers on one PostgreSQL create tables one at a time."""
        with self.store.schema_lock():
            self.store.migrate()
            return also()

    def take_lease(self, wait: bool = False, on_wait: Callable[[Holder], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> None:
        """This driver's lease on the sweep (see ``lease``): before any other write
        to the sweep, after the schema exists."""
        lease = Lease(self.store, self.sweep)
        lease.acquire(wait=wait, on_wait=on_wait, cancelled=cancelled)
        self.lease = lease

    def lease_lost(self) -> str | None:
        """Who took the sweep over, if our heartbeat found it taken."""
        return None if self.lease is None else self.lease.lost

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def open_sweep(self, spec: SweepSpec) -> int:
        """Record the sweep, once (a changed spec under the same name is refused)."""
        self.sweep_id = self.store.upsert_sweep(
            spec.name, spec.redacted(), spec.spec_hash(),
            {"commit": self.commit, **self.tags})
        return self.sweep_id

    def open_cell(self, study: str, variant: ModelVariant, target: str, lipschitz: float) -> int:
        """The cell's row and its MLflow parent run."""
        cell_id = self.store.upsert_cell(self.sweep_id, study, variant.label, variant.family,
                                         target, lipschitz)
        self.tracker.parent_run(study, {
            "varbench.sweep": self.sweep, "varbench.cell": study, "git.commit": self.commit,
            "varbench.variant": variant.label, "varbench.target": target,
            "varbench.lipschitz": f"{lipschitz:g}", **self.tags,
        })
        return cell_id

    def cells_without_reference(self) -> set[int]:
        return {row.id for row in self.store.cells(self.sweep_id) if not row.reference}

    def record_reference(self, cell_id: int, study: str, ref: dict) -> None:
        self.store.set_cell_fields(cell_id, reference=ref)
        self.tracker.log_parent_metrics(study, {
            f"reference.{k}.err_ucb": v["err_ucb"] for k, v in ref.items()})

    # --- trials ------------------------------------------------------------------

    def record_trial(self, cell_id: int, number: int, result: dict) -> bool:
        """The trial's row, once; False (and no write) if it is already there."""
        return self.store.record_trial(cell_id, number, result)

    def publish_trial(self, cell_id: int, study: str, number: int, result: dict,
                      eps: list[float], recovering: bool = False) -> None:
        """The trial's MLflow child run, and its id on the row."""
        cfg = result.get("config") or {}
        params = {k: v for k, v in cfg.items() if k != "eps"}
        params["eps_grid"] = ",".join(f"{e:g}" for e in eps)
        metrics = {k: result.get(k) for k in TRIAL_METRICS}
        for e, ok in (result.get("reached") or {}).items():
            metrics[f"reached.{e}"] = float(ok)
        tags = {
            "varbench.sweep": self.sweep, "varbench.cell": study, "git.commit": self.commit,
            "varbench.status": result.get("status", ""),
            "varbench.reason": result.get("reason", ""),
            "varbench.db": mask_url(self.settings.db_url), **self.tags,
        }
        run_id = self.tracker.log_trial(study, number, params, metrics, tags,
                                        failed=result.get("status") != "completed",
                                        recovering=recovering)
        self.store.set_trial_run_id(cell_id, number, run_id)

    def trials(self, cell_id: int) -> list[TrialRow]:
        return self.store.trials(cell_id)

    def refresh_frontier(self, cell_id: int, eps: list[float]) -> list[FrontierPoint]:
        points = frontier(self.store.trial_points(cell_id), eps)
        self.store.replace_frontier(cell_id, points)
        return points

    # --- a sweep's end, reports, nightly rows --------------------------------------

    def close_sweep(self, status: str, studies: list[str]) -> None:
        self.store.set_sweep_status(self.sweep_id, status)
        if status == "completed":
            for study in studies:
                self.tracker.finish_parent(study)

    def attach_report(self, files: list[Path]) -> None:
        """The report's files on every study's parent run."""
        row = self.store.sweep(self.sweep)
        for cell in self.store.cells(row.id):
            for f in files:
                self.tracker.log_artifact(cell.study_name, f)

    def record_nightly(self, date: str, regression: bool, comparison: dict) -> None:
        row = self.store.sweep(self.sweep)
        self.store.add_nightly(row.id, date, self.commit, regression, comparison)
