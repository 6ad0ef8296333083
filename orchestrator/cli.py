"""The ``varbench`` command line: typed functions, one per command.

Each command body calls the library, so every command is also a Python call
that tests can make. User mistakes become one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from varbench.orchestrator.errors import RunFailed, UserError

app = typer.Typer(
    name="varbench",
    help="Find the smallest VAR / FlowAR transformer that reaches each accuracy ε.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)  # long paths and names stay on one line


@app.callback()
def _root() -> None:
    """varbench: measure the smallest VAR / FlowAR model that reaches each ε, for each L."""


def fail(exc: Exception) -> None:
    """Turn a user error into one line (per spec problem) and exit 2, a failed run into exit 1."""
    from varbench.sweeps.spec import SpecError

    if isinstance(exc, SpecError):
        for line in exc.lines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    if isinstance(exc, UserError):
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"run failed: {exc}", err=True)
    raise typer.Exit(1)


def _parse_eps(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError("--eps", f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise UserError("--eps", "every ε must be a positive finite number")
    return values


@app.command()
def trial(
    model: Annotated[str, typer.Option(help="Model family: var or flowar.")] = "var",
    target: Annotated[str, typer.Option(help="Target family (upsample, linear, mlp, fourier).")] = "mlp",
    lipschitz: Annotated[float, typer.Option("--lipschitz", "-L", help="Lipschitz constant L.")] = 1.0,
    channels: Annotated[int, typer.Option(help="Channels c.")] = 1,
    s_first: Annotated[int, typer.Option("--s-first", help="Input side s₁.")] = 2,
    s_last: Annotated[int, typer.Option("--s-last", help="Output side s_K.")] = 8,
    inputs: Annotated[str, typer.Option(help="Input distribution: uniform or smooth.")] = "uniform",
    width: Annotated[int, typer.Option(help="Model width d.")] = 32,
    scales: Annotated[int, typer.Option(help="Scale count K.")] = 3,
    interp: Annotated[str, typer.Option(help="nearest, bilinear, bicubic or area.")] = "bicubic",
    heads: Annotated[int, typer.Option(help="Attention heads (theorem: 1).")] = 1,
    depth: Annotated[int, typer.Option(help="Attention layers (theorem: 1).")] = 1,
    ffn_ratio: Annotated[int, typer.Option(help="FFN hidden ratio r.")] = 4,
    layernorm: Annotated[bool, typer.Option(help="Pre-LayerNorm on the branches.")] = False,
    flow_steps: Annotated[int, typer.Option(help="FlowAR integration steps.")] = 4,
    flow_solver: Annotated[str, typer.Option(help="FlowAR solver: euler or heun.")] = "euler",
    steps: Annotated[int, typer.Option(help="Training step budget.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Fresh inputs per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-2,
    eps: Annotated[str, typer.Option(help="ε grid, comma-separated; stops early at the smallest.")] = "0.1,0.03,0.01,0.003,0.001",
    p: Annotated[str, typer.Option(help="Error norm p: 1, 2 or inf.")] = "2",
    n_eval: Annotated[int, typer.Option(help="Fresh inputs for the final error estimate.")] = 4096,
    seed: Annotated[int, typer.Option(help="Trial seed (init, data).")] = 0,
    replicas: Annotated[int, typer.Option(help="Seeds trained together; reports the best and the spread.")] = 1,
    backend: Annotated[str, typer.Option(help="Attention backend: auto, reference, sdpa, flex.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one trial (for debugging and sanity checks) and print its result."""
    from varbench.workers.validate import build_trial_config

    try:
        cfg = build_trial_config(
            model=model, target=target, lipschitz=lipschitz, channels=channels,
            s_first=s_first, s_last=s_last, inputs=inputs, width=width, scales=scales,
            interp=interp, heads=heads, depth=depth, ffn_ratio=ffn_ratio,
            layernorm=layernorm, flow_steps=flow_steps, flow_solver=flow_solver,
            steps=steps, batch_size=batch_size, lr=lr, eps=_parse_eps(eps), p=p,
            n_eval=n_eval, seed=seed, replicas=replicas, backend=backend, device=device,
        )
    except UserError as exc:
        fail(exc)
    from varbench.workers.trial import run_trial

    result = run_trial(cfg)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_trial(result)
    if result.status != "completed":
        raise typer.Exit(1)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _print_trial(r) -> None:
    cfg = r.config
    table = Table(title=f"trial: {cfg['model']} on {cfg['target']} (L={cfg['lipschitz']:g})")
    table.add_column("field")
    table.add_column("value", justify="right")
    rows = [
        ("status", r.status + (f" ({r.reason})" if r.reason else "")),
        (f"err_{cfg['p']:g}", _fmt(r.err)),
        ("err_ucb (95%)", _fmt(r.err_ucb)),
        ("relative err", _fmt(r.rel_err)),
        ("parameters N", f"{r.n_params:,}"),
        ("FLOPs/sample (fwd)", f"{r.flops:,}"),
        ("width d / scales K", f"{cfg['width']} / {cfg['scales']}"),
        ("steps run", f"{r.steps_run} of {cfg['steps']}"),
        *([("replicas err_ucb", ", ".join(_fmt(e) for e in r.replica_err_ucb))]
          if r.replica_err_ucb else []),
        ("time", f"{r.seconds:.2f} s ({1000 * r.sec_per_step:.2f} ms/step, {r.device})"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if r.reached:
        hits = [e for e, ok in r.reached.items() if ok]
        best = min(hits, key=float) if hits else None
        msg = f"reached ε = {best} (err_ucb {r.err_ucb:.3g} ≤ {best})" if best else (
            f"reached no ε of the grid (smallest {min(r.reached, key=float)})")
        console.print(msg)


DbOpt = Annotated[str | None, typer.Option("--db", help="Results store URL (default: SQLite in the work dir; env VARBENCH_DB_URL).")]
TrackOpt = Annotated[str | None, typer.Option("--tracking", help="MLflow tracking URI (default: SQLite in the work dir; env VARBENCH_TRACKING_URI).")]
WorkOpt = Annotated[str | None, typer.Option("--workdir", help="Work directory (default ./varbench-work; env VARBENCH_HOME).")]
AddrOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: an embedded local cluster).")]


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Sweep spec (YAML).")],
    address: AddrOpt = None,
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar.")] = True,
) -> None:
    """Run a sweep (or resume it) and print its frontier."""
    from varbench.orchestrator.driver import Driver
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import load_spec

    try:
        sweep = load_spec(spec)
        settings = resolve_settings(workdir, db, tracking, sweep.storage, sweep.tracking)
        driver = Driver(sweep, settings, address)
        driver.preflight()
    except UserError as exc:
        fail(exc)
    try:
        outcome = _run_with_progress(driver, progress)
    except UserError as exc:
        fail(exc)
    if outcome.interrupted:
        typer.echo(f"interrupted: {outcome.trials_recorded} trials recorded; "
                   f"resume with: varbench run {spec}", err=True)
        raise typer.Exit(130)
    console.print(f"sweep {sweep.name}: {outcome.trials_recorded} new trials recorded in "
                  f"{outcome.seconds:.1f} s (trial compute {outcome.compute_seconds:.1f} s)")
    _print_frontier(_frontier(settings.db_url, sweep.name))


def _run_with_progress(driver, show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not show:
        return driver.run()
    with Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  TextColumn("{task.fields[front]}"), console=console, transient=False) as bar:
        task = bar.add_task("sweep", total=None, front="")

        def update(p):
            bar.update(task, completed=p.done, total=p.total, front=p.frontier_text[:80])

        driver.on_progress = update
        return driver.run()


def _frontier(db_url: str, sweep: str) -> list[dict]:
    from varbench.orchestrator.queries import frontier_rows
    from varbench.orchestrator.store import ResultsStore

    store = ResultsStore(db_url)
    store.check()
    return frontier_rows(store, sweep)


def _print_frontier(rows: list[dict]) -> None:
    table = Table(title="frontier N*(ε, L): smallest N reaching ε (err_ucb ≤ ε)")
    for col in ("model", "target", "L", "ε", "N*", "trial", "err_ucb", "config / censored"):
        table.add_column(col, justify="right" if col in ("L", "ε", "N*", "trial", "err_ucb") else "left")
    for r in rows:
        if r["reached"]:
            c = r["config"]
            extra = f"d={c.get('width')} K={c.get('scales')} {c.get('interp')}"
            if r["family"] == "flowar":
                extra += f" steps={c.get('flow_steps')}"
            table.add_row(r["variant"], r["target"], f"{r['lipschitz']:g}", f"{r['eps']:g}",
                          f"{r['n_star']:,}", str(r["trial"]), _fmt(r["err_ucb"]), extra)
        else:
            table.add_row(r["variant"], r["target"], f"{r['lipschitz']:g}", f"{r['eps']:g}",
                          "not reached", "-", "-",
                          f"best err {_fmt(r['best_err'])}, largest N tried {r['max_n_tried'] or 0:,}")
    console.print(table)


@app.command()
def frontier(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    db: DbOpt = None,
    workdir: WorkOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print N* per ε and L for a sweep, with the trial that achieved it."""
    from varbench.orchestrator.settings import resolve_settings

    try:
        rows = _frontier(resolve_settings(workdir, db).db_url, sweep)
    except UserError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_frontier(rows)


@app.command()
def submit(
    spec: Annotated[str, typer.Argument(help="Sweep spec (YAML), inside the working directory.")],
    address: Annotated[str, typer.Option("--address", help="Ray dashboard / Jobs API address, e.g. http://127.0.0.1:8265.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job's logs until it ends.")] = False,
    working_dir: Annotated[str, typer.Option(help="Directory shipped to the cluster.")] = ".",
    db: DbOpt = None,
    tracking: TrackOpt = None,
) -> None:
    """Submit a sweep to a Ray cluster through the Ray Jobs API."""
    from pathlib import Path

    from varbench.orchestrator import submit as jobs
    from varbench.orchestrator.store import mask_url
    from varbench.sweeps.spec import load_spec

    try:
        sweep = load_spec(spec)
        env = {}
        if db:
            env["VARBENCH_DB_URL"] = db
        if tracking:
            env["VARBENCH_TRACKING_URI"] = tracking
        sub = jobs.submit(sweep, Path(spec), address, Path(working_dir), env)
    except (UserError, RunFailed) as exc:
        fail(exc)
    verb = "attached to existing job" if sub.attached else "submitted"
    console.print(f"{verb} {sub.submission_id} ({sub.status})"
                  + (f"; results in {mask_url(db)}" if db else ""), highlight=False)
    if wait:
        final = jobs.follow(address, sub.submission_id, typer.echo)
        console.print(f"job {sub.submission_id}: {final}", highlight=False)
        if final != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def status(
    target: Annotated[str | None, typer.Argument(help="A sweep name, or a job id with --address.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray Jobs API address (for job ids).")] = None,
    db: DbOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Show sweeps in the store (trials done per cell), or a Ray job's status."""
    from varbench.orchestrator.queries import sweep_status
    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import ResultsStore

    try:
        if address and target:
            from varbench.orchestrator import submit as jobs

            st = jobs.job_status(jobs.client(address), target)
            if st is None:
                raise UserError("JOB", f"no job {target!r} at {address}")
            console.print(f"{target}: {st}", highlight=False)
            return
        store = ResultsStore(resolve_settings(workdir, db).db_url)
        store.check()
        store.migrate()
        rows = sweep_status(store, target)
    except UserError as exc:
        fail(exc)
    table = Table(title="sweeps")
    for col in ("sweep", "status", "cell", "trials", "failed"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["sweep"], r["status"], r["cell"], f"{r['done']}/{r['planned']}", str(r["failed"]))
    console.print(table)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (default loopback only).")] = "127.0.0.1",
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Serve the MLflow UI over the configured tracking store (127.0.0.1 by default)."""
    import os
    import shutil
    import sys

    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import mask_url

    settings = resolve_settings(workdir, None, tracking)
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    console.print(f"MLflow UI on http://{host}:{port} over {mask_url(settings.tracking_uri)}", highlight=False)
    os.execv(mlflow_bin, [mlflow_bin, "ui", "--backend-store-uri", settings.tracking_uri,
                          "--default-artifact-root", settings.artifact_root,
                          "--host", host, "--port", str(port)])


@app.command()
def doctor(
    address: AddrOpt = None,
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Versions, GPU, and whether the stores and the cluster are reachable."""
    import importlib.metadata as md
    import platform

    import torch

    from varbench.orchestrator.cluster import check_address
    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import ResultsStore, mask_url
    from varbench.orchestrator.tracking import Tracker

    settings = resolve_settings(workdir, db, tracking)
    table = Table(title="varbench doctor")
    table.add_column("check")
    table.add_column("result")
    table.add_row("python", platform.python_version())
    for pkg in ("torch", "ray", "optuna", "mlflow", "sqlalchemy", "typer", "pydantic"):
        try:
            table.add_row(pkg, md.version(pkg))
        except md.PackageNotFoundError:
            table.add_row(pkg, "missing")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU trials)"
    table.add_row("GPU", gpu)
    ok = True
    checks = [
        (f"results store {mask_url(settings.db_url)}", lambda: ResultsStore(settings.db_url).check()),
        (f"MLflow {mask_url(settings.tracking_uri)}", lambda: Tracker(settings.tracking_uri, "varbench/doctor").check()),
    ]
    if address:
        checks.append((f"Ray {address}", lambda: check_address(address)))
    for name, fn in checks:
        try:
            fn()
            table.add_row(name, "ok")
        except UserError as exc:
            ok = False
            table.add_row(name, f"FAILED: {exc.problem}")
    console.print(table)
    if not ok:
        raise typer.Exit(1)


@app.command()
def report(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
    out: Annotated[str | None, typer.Option(help="Output directory (default WORKDIR/reports/SWEEP).")] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 300,
) -> None:
    """Write the HTML report and markdown summary; log both on the studies' MLflow runs."""
    from pathlib import Path

    from varbench.orchestrator.reporting import publish_report
    from varbench.orchestrator.settings import resolve_settings

    try:
        settings = resolve_settings(workdir, db, tracking)
        rep = publish_report(settings, sweep, Path(out) if out else None, n_boot=boot)
    except UserError as exc:
        fail(exc)
    for f in rep.fits:
        if f.ok:
            console.print(f"{f.group}: β = {_fmt_ci(f.beta, f.beta_ci)}, γ = {_fmt_ci(f.gamma, f.gamma_ci)}"
                          f" from {f.n_points} points" + (f" ({f.note})" if f.note else ""), highlight=False)
        else:
            console.print(f"{f.group}: no fit ({f.note})", highlight=False)
    console.print(f"report: {rep.html_path}\nsummary: {rep.md_path}", highlight=False)


def _fmt_ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{v:.3g}"


@app.command()
def nightly(
    spec: Annotated[str, typer.Option(help="The nightly spec.")] = "sweeps/nightly.yaml",
    address: AddrOpt = None,
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
    date: Annotated[str | None, typer.Option(help="Night to record (YYYY-MM-DD, default today UTC).")] = None,
    fail_on_regression: Annotated[bool, typer.Option(help="Exit 1 when a regression is flagged.")] = True,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples for the fits.")] = 300,
) -> None:
    """Run the nightly sweep tagged with date and commit; compare with the previous night."""
    from varbench.orchestrator.reporting import run_nightly
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import load_spec

    try:
        base = load_spec(spec)
        settings = resolve_settings(workdir, db, tracking, base.storage, base.tracking)
        result = run_nightly(base, settings, address, date, n_boot=boot,
                             on_driver=lambda d: _run_with_progress(d, True))
    except UserError as exc:
        fail(exc)
    comp = result.comparison
    if comp.previous is None:
        console.print(f"{result.sweep}: first night, nothing to compare", highlight=False)
    else:
        n_reg = sum(p.regression for p in comp.points) + len(comp.exponent_regressions)
        console.print(f"{result.sweep} vs {comp.previous}: {n_reg} regression(s) outside the noise",
                      highlight=False)
        for p in comp.points:
            if p.regression:
                console.print(f"  REGRESSION {p.cell} ε={p.eps:g}: N* {p.prev} -> {p.curr}", highlight=False)
        for line in comp.exponent_regressions:
            console.print(f"  REGRESSION {line}", highlight=False)
    console.print(f"report: {result.report.html_path}", highlight=False)
    if comp.regression and fail_on_regression:
        raise typer.Exit(1)


def main() -> None:
    from varbench.orchestrator.submit import use_token_if_given

    use_token_if_given()  # before Ray is imported: it reads the auth mode once
    app()


if __name__ == "__main__":
    main()
