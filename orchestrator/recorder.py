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

from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import ResultsStore, TrialRow, mask_url
from varbench.orchestrator.tracking import Tracker, git_commit
from varbench.sweeps.frontier import FrontierPoint, frontier, frontier_intervals
from varbench.sweeps.spec import ModelVariant, SweepSpec

T = TypeVar("T")
TRIAL_METRICS = ("err", "err_ucb", "rel_err", "n_params", "flops", "steps_run", "seconds",
                 "sec_per_step")


def experiment_name(sweep: str) -> str:
    return f"varbench/{sweep}"


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

    def check(self) -> None:
        """Both stores reachable, before anything is written."""
        self.store.check()
        self.tracker.check()

    # --- a sweep's start -------------------------------------------------------

    def set_up_schema(self, also: Callable[[], T]) -> T:
        """Bring our tables to head and run ``also`` (Optuna's own set-up) under one
        schema lock: concurrent drivers on one PostgreSQL create tables one at a time."""
        with self.store.schema_lock():
            self.store.migrate()
            return also()

    def open_sweep(self, spec: SweepSpec) -> int:
        """Record the sweep, once (a changed spec under the same name is refused)."""
        self.sweep_id = self.store.upsert_sweep(
            spec.name, spec.model_dump(mode="json"), spec.spec_hash(),
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
            **({"varbench.flow_source": variant.flow_source} if variant.family == "flowar" else {}),
        })
        return cell_id

    def cells_without_reference(self) -> set[int]:
        return {row.id for row in self.store.cells(self.sweep_id) if not row.reference}

    def record_reference(self, cell_id: int, study: str, ref: dict) -> None:
        self.store.set_cell_fields(cell_id, reference=ref)
        metrics = {f"reference.{k}.err_ucb": v["err_ucb"] for k, v in ref.items()
                   if "err_ucb" in v}
        if "lipschitz" in ref:
            metrics["lipschitz_emp"] = ref["lipschitz"]["empirical"]
        self.tracker.log_parent_metrics(study, metrics)

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
            self.log_frontier_intervals()
            for study in studies:
                self.tracker.finish_parent(study)

    def log_frontier_intervals(self) -> None:
        """N*(ε) and its 95% interval (``frontier_intervals``) on each study's parent run."""
        eps = list(self.store.sweep(self.sweep).spec["eps"])
        for cell in self.store.cells(self.sweep_id):
            trials = self.store.trial_points(cell.id)
            iv = frontier_intervals(trials, eps)
            metrics = {}
            for p in frontier(trials, eps):
                if p.reached:
                    lo, hi = iv[p.eps]
                    metrics.update({f"nstar.{p.eps:g}": p.n_star, f"nstar_lo.{p.eps:g}": lo,
                                    f"nstar_hi.{p.eps:g}": hi})  # inf (not reached) is left out
            if metrics:
                self.tracker.log_parent_metrics(cell.study_name, metrics)

    def attach_report(self, files: list[Path]) -> None:
        """The report's files on every study's parent run."""
        row = self.store.sweep(self.sweep)
        for cell in self.store.cells(row.id):
            for f in files:
                self.tracker.log_artifact(cell.study_name, f)

    def record_nightly(self, date: str, regression: bool, comparison: dict) -> None:
        row = self.store.sweep(self.sweep)
        self.store.add_nightly(row.id, date, self.commit, regression, comparison)
