"""Driver-side glue for reports and nightly runs: build, store, log to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from varbench.orchestrator.driver import Driver, SweepOutcome
from varbench.orchestrator.nightly import Comparison, compare, comparison_markdown, previous_night, today
from varbench.orchestrator.report import Report, build_report, collect, scaling_fits
from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import ResultsStore
from varbench.orchestrator.tracking import Tracker, git_commit
from varbench.sweeps.spec import SweepSpec


def publish_report(settings: Settings, sweep: str, out: Path | None = None, n_boot: int = 300,
                   extra_md: list[str] | None = None, fits=None) -> Report:
    store = ResultsStore(settings.db_url)
    store.check()
    out_dir = out or settings.workdir / "reports" / sweep
    rep = build_report(store, sweep, out_dir, n_boot=n_boot, extra_md=extra_md, fits=fits)
    tracker = Tracker(settings.tracking_uri, f"varbench/{sweep}", artifact_root=settings.artifact_root)
    row = store.sweep(sweep)
    for cell in store.cells(row.id):
        tracker.log_artifact(cell.study_name, rep.html_path)
        tracker.log_artifact(cell.study_name, rep.md_path)
    return rep


@dataclass
class NightlyResult:
    sweep: str
    outcome: SweepOutcome
    comparison: Comparison
    report: Report


def run_nightly(base: SweepSpec, settings: Settings, address: str | None = None,
                date: str | None = None, n_boot: int = 300,
                on_driver: Callable[[Driver], SweepOutcome] | None = None) -> NightlyResult:
    date = date or today()
    commit = git_commit()
    name = f"{base.name}-{date}-{commit[:8]}"
    spec = base.model_copy(update={"name": name})
    driver = Driver(spec, settings, address, tags={"nightly": base.name, "date": date})
    driver.preflight()
    outcome = on_driver(driver) if on_driver else driver.run()
    store = ResultsStore(settings.db_url)
    prev = previous_night(store, base.name, name)
    curr_fits = _fits(store, name, n_boot)
    prev_fits = _fits(store, prev, n_boot) if prev else None
    comp = compare(store, prev, name, prev_fits, curr_fits)
    rep = publish_report(settings, name, n_boot=n_boot, extra_md=comparison_markdown(comp),
                         fits=curr_fits)  # the bootstrap fits once, not twice
    store.add_nightly(store.sweep(name).id, date, commit, comp.regression, comp.to_dict())
    return NightlyResult(name, outcome, comp, rep)


def _fits(store: ResultsStore, sweep: str, n_boot: int):
    row, cells, trials = collect(store, sweep)
    return scaling_fits(cells, trials, row.spec["eps"], n_boot=n_boot)
