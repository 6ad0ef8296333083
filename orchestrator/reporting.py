"""Driver-side glue for reports and nightly runs: build, store, log to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from varbench.orchestrator.driver import Driver, SweepOutcome
from varbench.orchestrator.nightly import (
    Comparison,
    compare,
    comparison_markdown,
    previous_night,
    today,
)
from varbench.orchestrator.recorder import Recorder
from varbench.orchestrator.report import Report, build_report, collect, scaling_fits
from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import ResultsView
from varbench.orchestrator.tracking import git_commit
from varbench.sweeps.frontier import N_BOOT
from varbench.sweeps.spec import SweepSpec


def publish_report(settings: Settings, sweep: str, out: Path | None = None,
                   n_boot: int = N_BOOT, extra_md: list[str] | None = None, fits=None,
                   log: bool = True) -> Report:
    """Build the report from a read-only view; with ``log``, the recorder attaches it
    to the studies' MLflow runs."""
    view = ResultsView(settings.db_url)
    view.check()
    recorder = Recorder(settings, sweep) if log else None
    if recorder is not None:
        recorder.check()  # a moved work directory is refused before anything is written
    out_dir = out or settings.workdir / "reports" / sweep
    rep = build_report(view, sweep, out_dir, n_boot=n_boot, extra_md=extra_md, fits=fits)
    if recorder is not None:
        recorder.attach_report([rep.html_path, rep.md_path])
    return rep


@dataclass
class NightlyResult:
    sweep: str
    outcome: SweepOutcome
    comparison: Comparison
    report: Report


def run_nightly(base: SweepSpec, settings: Settings, address: str | None = None,
                date: str | None = None, n_boot: int = N_BOOT,
                on_driver: Callable[[Driver], SweepOutcome] | None = None) -> NightlyResult:
    date = date or today()
    name = f"{base.name}-{date}-{git_commit()[:8]}"
    spec = base.model_copy(update={"name": name})
    driver = Driver(spec, settings, address, tags={"nightly": base.name, "date": date})
    driver.preflight()
    outcome = on_driver(driver) if on_driver else driver.run()
    if outcome.interrupted:  # a partial night is neither compared nor recorded
        raise KeyboardInterrupt
    view = ResultsView(settings.db_url)
    prev = previous_night(view, base.name, name)
    curr_fits = _fits(view, name, n_boot)
    prev_fits = _fits(view, prev, n_boot) if prev else None
    comp = compare(view, prev, name, prev_fits, curr_fits, n_boot=n_boot)
    rep = publish_report(settings, name, n_boot=n_boot, extra_md=comparison_markdown(comp),
                         fits=curr_fits)  # the bootstrap fits once, not twice
    driver.recorder.record_nightly(date, comp.regression, comp.to_dict())
    return NightlyResult(name, outcome, comp, rep)


def _fits(view: ResultsView, sweep: str, n_boot: int):
    row, cells, trials = collect(view, sweep)
    return scaling_fits(cells, trials, row.spec["eps"], n_boot=n_boot,
                        verdicts={c.id: view.verdicts(c.id) for c in cells})
