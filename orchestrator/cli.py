"""The ``varbench`` command line: typed functions, one per command.

Each command body calls the library, so every command is also a Python call
that tests can make. One error boundary (``command``) maps what a command
raises to exit codes: a user's mistake (``UserError``) is one line and 2, a
run that failed is 1, an interrupt 130. Choices are enums built from the
registries' names, so the parser lists what exists and refuses a typo.

Fixed cost: this module imports no torch, Ray, MLflow, Optuna or SQLAlchemy.
Names and defaults come from torch-free modules (``models.config``,
``workers.config``) and each command imports what it runs, so ``--help``
and a usage error answer at once (tests/test_lazy_cli.py).
"""

from __future__ import annotations

import enum
import functools
import json
import sys
from collections.abc import Callable, Collection
from typing import Annotated, NoReturn, TypeVar

import typer

# Typer 0.29 raises its vendored click's exceptions and exports no public alias of
# UsageError / NoArgsIsHelpError; the `click` distribution in the venv is not what it uses
from typer._click import exceptions as usage
from typer.core import TyperGroup

# torch-free names and defaults: the registries hold these names (tests/test_lazy_cli.py)
from varbench.models.config import (
    BACKENDS,
    FAMILY_NAMES,
    INPUTS,
    INTERPOLATION_NAMES,
    SOLVERS,
    TARGET_NAMES,
)
from varbench.orchestrator.errors import RunFailed, UserError
from varbench.workers.config import DEFAULT_EPS, TrialConfig


class OneLineErrors(TyperGroup):
    """Click's usage errors (unknown option, bad choice) as one line and exit 2,
    like every other user error; help and our own exits pass through."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except usage.NoArgsIsHelpError as exc:
            sys.exit(exc.exit_code)  # the help is already printed
        except usage.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            typer.echo(f"error: {message}{where}", err=True)
            sys.exit(2)
        except usage.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="varbench",
    help="Find the smallest VAR / FlowAR transformer that reaches each accuracy ε.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: fits 80 columns without splitting choice lists, and skips
    # rich's help renderer (and the markdown parser it loads), a third of --help's time
    rich_markup_mode=None,
)
D = TrialConfig()  # every trial option's default comes from here
F = TypeVar("F", bound=Callable)


@functools.cache
def _console():
    """rich's console, made on first output, so --help and usage errors never load rich."""
    from rich.console import Console

    return Console(soft_wrap=True)  # long paths and names stay on one line


@app.callback()
def _root() -> None:
    """varbench: measure the smallest VAR / FlowAR model that reaches each ε, for each L."""


def fail(exc: Exception) -> NoReturn:
    """Turn a user error into one line (per spec problem) and exit 2, a failed run into exit 1."""
    from varbench.sweeps.redact import mask_url
    from varbench.sweeps.spec import SpecError

    def say(line: str) -> None:  # a URL quoted in an error keeps its password masked
        typer.echo(mask_url(" ".join(line.split())), err=True)

    if isinstance(exc, SpecError):
        for line in exc.lines():
            say(f"error: {line}")
        raise typer.Exit(2)
    if isinstance(exc, UserError):
        say(f"error: {exc}")
        raise typer.Exit(2)
    say(f"run failed: {exc}")
    raise typer.Exit(1)


def command(fn: F) -> F:
    """Register ``fn`` as a command behind the one error boundary."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, RunFailed) as exc:
            fail(exc)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    summary = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
    app.command(short_help=summary)(guarded)  # the command list shows it whole, wrapped
    return guarded  # type: ignore[return-value]


def choice(name: str, names: Collection[str]) -> type[enum.Enum]:
    """A registry's names as a str enum: a Typer choice that lists what exists."""
    return enum.Enum(name, {n: n for n in sorted(names)}, type=str)  # type: ignore[return-value]


Family = choice("Family", FAMILY_NAMES)
Target = choice("Target", TARGET_NAMES)
Interp = choice("Interp", INTERPOLATION_NAMES)
Inputs = choice("Inputs", INPUTS)
Solver = choice("Solver", SOLVERS)
Backend = choice("Backend", BACKENDS)


def _parse_eps(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError("--eps", f"not a comma-separated list of numbers: {text!r}") from None


def _parse_sets(pairs: list[str]) -> dict:
    """``--set key=value`` pairs: any TrialConfig field, the value read as YAML."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError("--set", f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError("--set", f"cannot read the value of {key.strip()!r}") from None
    return out


@command
def trial(
    model: Annotated[Family, typer.Option(help="Model family.")] = D.model,
    target: Annotated[Target, typer.Option(help="Target family.")] = D.target,
    lipschitz: Annotated[float, typer.Option("--lipschitz", "-L", help="Lipschitz constant L.")] = D.lipschitz,
    channels: Annotated[int, typer.Option(help="Channels c.")] = D.channels,
    s_first: Annotated[int, typer.Option("--s-first", help="Input side s₁.")] = D.s_first,
    s_last: Annotated[int, typer.Option("--s-last", help="Output side s_K.")] = D.s_last,
    inputs: Annotated[Inputs, typer.Option(help="Input distribution.")] = D.inputs,
    width: Annotated[int, typer.Option(help="Model width d.")] = D.width,
    scales: Annotated[int, typer.Option(help="Scale count K.")] = D.scales,
    interp: Annotated[Interp, typer.Option(help="Up-interpolation.")] = D.interp,
    heads: Annotated[int, typer.Option(help="Attention heads (theorem: 1).")] = D.heads,
    depth: Annotated[int, typer.Option(help="Attention layers (theorem: 1).")] = D.depth,
    ffn_ratio: Annotated[int, typer.Option(help="FFN hidden ratio r.")] = D.ffn_ratio,
    layernorm: Annotated[bool, typer.Option(help="Pre-LayerNorm on the branches.")] = D.layernorm,
    flow_steps: Annotated[int, typer.Option(help="FlowAR integration steps.")] = D.flow_steps,
    flow_solver: Annotated[Solver, typer.Option(help="FlowAR solver.")] = D.flow_solver,
    steps: Annotated[int, typer.Option(help="Training step budget.")] = D.steps,
    batch_size: Annotated[int, typer.Option(help="Fresh inputs per step.")] = D.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = D.lr,
    eps: Annotated[str, typer.Option(metavar="ε,ε,...", help="ε grid, comma-separated; stops early at the smallest.")] = ",".join(f"{e:g}" for e in DEFAULT_EPS),
    p: Annotated[str, typer.Option(metavar="P", help="Error norm p: a number >= 1 (1, 2, ...) or inf.")] = f"{D.p:g}",
    n_eval: Annotated[int, typer.Option(help="Fresh inputs for the final error estimate.")] = D.n_eval,
    seed: Annotated[int, typer.Option(help="Trial seed (init, data).")] = D.seed,
    replicas: Annotated[int, typer.Option(help="Seeds trained together; reports the best and the spread.")] = D.replicas,
    backend: Annotated[Backend, typer.Option(help="Attention backend.")] = D.backend,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = D.device,
    sets: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Any other trial setting, KEY=VALUE (e.g. --set batch_size=128); repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one trial (for debugging and sanity checks) and print its result."""
    from varbench.sweeps.fields import build_trial_config
    from varbench.workers.trial import run_trial

    # every parameter but the last two is a TrialConfig field of the same name
    named = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in locals().items()
             if k not in ("sets", "as_json", "build_trial_config", "run_trial")}
    named["eps"] = _parse_eps(eps)
    cfg = build_trial_config(**{**named, **_parse_sets(sets or [])})
    result = run_trial(cfg)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_trial(result)
    if result.status == "failed":
        raise typer.Exit(1)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _print_trial(r) -> None:
    from rich.table import Table

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
        # FlowAR's inference settings (--set flow_evals=...), on the same trained model
        *[(f"err_ucb at {e['flow_steps']} {e['flow_solver']}",
           f"{_fmt(e['err_ucb'])} ({e['flops']:,} FLOPs)") for e in r.flow_evals],
    ]
    for k, v in rows:
        table.add_row(k, v)
    _console().print(table)
    if r.reached:
        hits = [e for e, ok in r.reached.items() if ok]
        best = min(hits, key=float) if hits else None
        msg = f"reached ε = {best} (err_ucb {r.err_ucb:.3g} ≤ {best})" if best else (
            f"reached no ε of the grid (smallest {min(r.reached, key=float)})")
        _console().print(msg)


DbOpt = Annotated[str | None, typer.Option("--db", help="Results store URL (default: SQLite in the work dir; env VARBENCH_DB_URL).")]
TrackOpt = Annotated[str | None, typer.Option("--tracking", help="MLflow tracking URI (default: SQLite in the work dir; env VARBENCH_TRACKING_URI).")]
WorkOpt = Annotated[str | None, typer.Option("--workdir", help="Work directory (default ./varbench-work; env VARBENCH_HOME).")]
AddrOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: an embedded local cluster).")]


@command
def run(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Sweep spec (YAML).")],
    address: AddrOpt = None,
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar.")] = True,
    wait_lock: Annotated[bool, typer.Option("--wait-lock", help="If another driver runs this sweep, wait for it to end instead of refusing.")] = False,
    check: Annotated[bool | None, typer.Option("--check/--no-check", help="Turn the convergence check (retrain each frontier point at check.factor x the budget) on or off, whatever the spec says; the same sweep resumes either way.")] = None,
) -> None:
    """Run a sweep (or resume it) and print its frontier."""
    import ray

    from varbench.orchestrator import cluster
    from varbench.orchestrator.driver import Driver
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import load_spec

    sweep = load_spec(spec)
    if check is not None:  # the check section is not part of the spec hash: it resumes
        sweep = sweep.model_copy(update={"check": sweep.check.model_copy(
            update={"enabled": check})})
    settings = resolve_settings(workdir, db, tracking, sweep.storage, sweep.tracking)
    driver = Driver(sweep, settings, address, wait_lock=wait_lock,
                    on_wait=lambda line: typer.echo(line, err=True))
    ours = not ray.is_initialized()  # this command connects, so it also leaves
    try:
        driver.preflight()
        outcome = _run_with_progress(driver, progress)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the driver's handler
        outcome = None
    if outcome is None or outcome.interrupted:
        again = _resume_command(spec, settings, address, check)
        done = f"{outcome.trials_recorded} trials recorded" if outcome else "stopped during set-up"
        typer.echo(f"interrupted: {done}; resume with: {again}", err=True)
        raise typer.Exit(130)
    checks = f", {outcome.checks_run} convergence-check trials" if outcome.checks_run else ""
    _console().print(f"sweep {sweep.name}: {outcome.trials_recorded} new trials recorded{checks} "
                     f"in {outcome.seconds:.1f} s (trial compute {outcome.compute_seconds:.1f} s)")
    _print_frontier(_frontier(settings.db_url, sweep.name))
    if ours:  # now, not in Ray's exit hook (0.7 s slower)
        cluster.shutdown()


def _resume_command(spec: str, settings, address: str | None = None,
                    check: bool | None = None) -> str:
    """The command that resumes this sweep: the same spec, cluster and stores, as
    resolved (flags, environment or spec), so it works from any directory and
    shell. The work directory is always named; a password in a URL stays masked."""
    import shlex
    from pathlib import Path

    from varbench.orchestrator.store import mask_url

    home = settings.workdir  # what --workdir alone gives, with no environment
    parts = ["varbench", "run", str(Path(spec).absolute()), "--workdir", str(home)]
    if address:
        parts += ["--address", address]
    if settings.db_url != f"sqlite:///{home / 'varbench.db'}":
        parts += ["--db", mask_url(settings.db_url)]
    if settings.tracking_uri != f"sqlite:///{home / 'mlflow.db'}":
        parts += ["--tracking", mask_url(settings.tracking_uri)]
    if check is not None:  # the check as this run had it
        parts += ["--check" if check else "--no-check"]
    return shlex.join(parts)


def progress_bar(console):
    """The sweep's progress line: trials done, times, and the frontier so far."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    # the frontier text takes what the other columns leave and is cut with an ellipsis:
    # unbounded, it squeezed the counts and times to "20… 0:…" at 80 columns
    front = TextColumn("{task.fields[front]}",
                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"))
    return Progress(TextColumn("[bold]trials"), BarColumn(bar_width=16), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), front,
                    console=console, transient=False, expand=True)


def _run_with_progress(driver, show: bool):
    if not show:
        return driver.run()
    with progress_bar(_console()) as bar:
        task = bar.add_task("sweep", total=None, front="")

        def update(p):
            bar.update(task, completed=p.done, total=p.total, front=p.frontier_text[:80])

        driver.on_progress = update
        return driver.run()


def _flops(n: int | None) -> str:
    """Inference FLOPs per sample, short: ``41.2k FLOPs``."""
    if not n:
        return ""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit} FLOPs"
    return f"{n} FLOPs"


def _frontier(db_url: str, sweep: str) -> list[dict]:
    from varbench.orchestrator.queries import frontier_rows
    from varbench.orchestrator.store import ResultsView

    view = ResultsView(db_url)
    view.check()
    return frontier_rows(view, sweep)


def _print_frontier(rows: list[dict]) -> None:
    """One compact table per (model, target), readable at 80 columns; the JSON
    (`frontier --json`) and the report carry every field, effective N included."""
    from rich import box
    from rich.table import Table

    from varbench.orchestrator.queries import interval_text, recipe_text

    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # one table per budget too: results at two budgets never share one
        groups.setdefault((r["variant"], r["target"], r.get("steps")), []).append(r)
    several = len({k[2] for k in groups}) > 1
    mark = {True: " ✓", False: " ✗", None: ""}  # beside N*: the table stays within 80 columns
    for (variant, target, steps), group in groups.items():
        at = f" · {steps} steps" if several else ""
        factor = next((r["check"]["factor"] for r in group if r.get("check")), None)
        legend = ("" if factor is None else  # only where a convergence check ran
                  f"\n✓ converged (holds at {factor}x the budget) · ✗ budget-limited "
                  "· unmarked: unchecked")
        # the title fits 80 columns; the caption says what N* is conditional on
        table = Table(title=f"{variant} · {target}{at}: N*(ε, L), the smallest N with "
                            "err_ucb ≤ ε",
                      caption=f"recipe: {recipe_text(group[0].get('recipe') or {})}\n"
                              + lr_lines(group) +
                              "N* holds under this training budget; n.r.: not reached "
                              "(censored)" + legend,
                      box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left")
        for col in ("L", "ε", "N*", "95% interval", "trial", "err_ucb", "config / censored"):
            table.add_column(col, justify="left" if col == "config / censored" else "right")
        for r in group:
            if r["reached"]:
                c = r["config"]
                extra = f"d={c.get('width')} K={c.get('scales')} {c.get('interp')}"
                if r["family"] == "flowar":
                    extra += f" {c.get('flow_source') or 'interp'} {_flops(r.get('flops'))}"
                table.add_row(f"{r['lipschitz']:g}", f"{r['eps']:g}",
                              f"{r['n_star']:,}{mark[r.get('converged')]}",
                              interval_text(r["n_star_ci"], "n.r."), str(r["trial"]),
                              _fmt(r["err_ucb"]), extra)
            else:
                # censored: the best err_ucb any trial reached, and up to which N it tried
                # (in the err_ucb column, so the row fits 80 columns)
                table.add_row(f"{r['lipschitz']:g}", f"{r['eps']:g}", "n.r.",
                              interval_text(r["n_star_ci"], "n.r."), "-", _fmt(r["best_err"]),
                              f"best of N ≤ {r['max_n_tried']:,}" if r["max_n_tried"]
                              else "no trial completed")
        _console().print(table)


def lr_lines(rows: list[dict], width: int = 78) -> str:
    """Where the lr differs by trial (a per-width rule, a search): the lr each N* trial
    used, ``lr by trial: #8 0.028 · #3 0.01``, in lines of at most ``width`` columns
    (a column in the table would take it past 80); "" for one fixed lr."""
    recipe = (rows[0].get("recipe") or {}) if rows else {}
    if recipe.get("lr_choice", "searched" if recipe.get("lr_searched") else "fixed") == "fixed":
        return ""
    # trial numbers are per study: with several L in the table, L names the trial too
    several = len({r.get("lipschitz") for r in rows}) > 1
    used = {(r.get("lipschitz"), r["trial"]): r["config"]["lr"] for r in rows
            if r["reached"] and (r.get("config") or {}).get("lr") is not None}
    if not used:
        return ""
    lines, line = [], "lr by trial:"
    for (lip, trial), lr in used.items():
        item = f"L={lip:g} #{trial} {lr:.2g}" if several else f"#{trial} {lr:.2g}"
        if len(line) + len(item) + 3 > width:
            lines.append(line)
            line = "  " + item
        else:
            line += (" " if line.endswith(":") else " · ") + item
    return "\n".join([*lines, line]) + "\n"


@command
def frontier(
    sweep: Annotated[str, typer.Argument(metavar="SWEEP", help="Sweep name.")],
    db: DbOpt = None,
    workdir: WorkOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print N* per ε and L for a sweep, with the trial that achieved it."""
    from varbench.orchestrator.settings import resolve_settings

    rows = _frontier(resolve_settings(workdir, db).db_url, sweep)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_frontier(rows)


@command
def submit(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Sweep spec (YAML), inside the working directory.")],
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

    sweep = load_spec(spec)
    env = {}
    if db:
        env["VARBENCH_DB_URL"] = db
    if tracking:
        env["VARBENCH_TRACKING_URI"] = tracking
    sub = jobs.submit(sweep, Path(spec), address, Path(working_dir), env)
    verb = "attached to existing job" if sub.attached else "submitted"
    _console().print(f"{verb} {sub.submission_id} ({sub.status})"
                  + (f"; results in {mask_url(db)}" if db else ""), highlight=False)
    if wait:
        final = jobs.follow(address, sub.submission_id, typer.echo)
        _console().print(f"job {sub.submission_id}: {final}", highlight=False)
        if final != "SUCCEEDED":
            raise typer.Exit(1)


@command
def status(
    target: Annotated[str | None, typer.Argument(metavar="SWEEP|JOB_ID", help="A sweep name, or a job id with --address.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray Jobs API address (for job ids).")] = None,
    db: DbOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Show sweeps in the store (trials done per cell), or a Ray job's status."""
    from rich.table import Table

    from varbench.orchestrator.queries import sweep_status
    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import ResultsView

    if address and target:
        from varbench.orchestrator import submit as jobs

        st = jobs.job_status(jobs.client(address), target)
        if st is None:
            raise UserError("JOB", f"no job {target!r} at {address}")
        _console().print(f"{target}: {st}", highlight=False)
        return
    view = ResultsView(resolve_settings(workdir, db).db_url)
    view.check()
    rows = sweep_status(view, target)
    if not rows:
        _console().print("no sweeps in the results store yet", highlight=False)
    # one table per sweep, its cells named without the sweep's prefix: a cell of a
    # budget list or a FlowAR setting ("var-open:fourier:L=4:steps=6400") stays on
    # one line at 80 columns
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        mine = [r for r in rows if r["sweep"] == sweep]
        table = Table(title=f"sweep {sweep} · {mine[0]['status']}", title_justify="left")
        for col in ("cell", "model", "trials", "failed"):
            table.add_column(col, no_wrap=col == "cell")
        for r in mine:
            table.add_row(r["cell"].removeprefix(f"{sweep}:"), r["model"],
                          f"{r['done']}/{r['planned']}", str(r["failed"]))
        _console().print(table)


@command
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (default loopback only).")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Web worker processes (MLflow's default is 4).")] = 1,
    jobs: Annotated[bool, typer.Option("--jobs/--no-jobs", help="Run MLflow's job runner too (off: it starts several more processes).")] = False,
    tracking: TrackOpt = None,
    db: DbOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Serve the MLflow UI over the configured tracking store (127.0.0.1 by default):
    one web worker and no job runner unless asked, so it answers within seconds."""
    import os

    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import mask_url
    from varbench.orchestrator.tracking import latest_sweep_url, ui_command

    settings = resolve_settings(workdir, db, tracking)
    argv, env = ui_command(settings, host=host, port=port, workers=workers, jobs=jobs)
    _console().print(f"MLflow UI on http://{host}:{port} over {mask_url(settings.tracking_uri)}",
                  highlight=False)
    latest = latest_sweep_url(settings, f"http://{host}:{port}")
    if latest:
        _console().print(f"latest sweep: {latest}", highlight=False)
    os.environ.update(env)
    os.execv(argv[0], argv)


@command
def dashboard(
    port: Annotated[int, typer.Option(help="Port for optuna-dashboard.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind (default loopback only).")] = "127.0.0.1",
    db: DbOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Serve optuna-dashboard over the sweeps' Optuna studies (needs varbench[dashboard]):
    Pareto fronts with named objectives (n_params, err_ucb)."""
    import os

    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import mask_url
    from varbench.orchestrator.studies import dashboard_command

    settings = resolve_settings(workdir, db)
    argv = dashboard_command(settings.db_url, host=host, port=port)
    _console().print(f"optuna-dashboard on http://{host}:{port} over {mask_url(settings.db_url)}",
                  highlight=False)
    os.execv(argv[0], argv)


@command
def doctor(
    address: AddrOpt = None,
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
) -> None:
    """Versions, GPU, and whether the stores and the cluster are reachable (reads only)."""
    from rich.table import Table

    from varbench.orchestrator.doctor import run_checks
    from varbench.orchestrator.settings import resolve_settings

    checks = run_checks(resolve_settings(workdir, db, tracking), address)
    table = Table(title="varbench doctor")
    table.add_column("check")
    table.add_column("result")
    for c in checks:
        table.add_row(c.name, c.result)
    _console().print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@command
def report(
    sweep: Annotated[str, typer.Argument(metavar="SWEEP", help="Sweep name.")],
    db: DbOpt = None,
    tracking: TrackOpt = None,
    workdir: WorkOpt = None,
    out: Annotated[str | None, typer.Option(help="Output directory (default WORKDIR/reports/SWEEP).")] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 300,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Attach the report to the studies' MLflow runs (--no-log: write only the files).")] = True,
) -> None:
    """Write the HTML report and markdown summary; log both on the studies' MLflow runs."""
    from pathlib import Path

    from varbench.orchestrator.reporting import publish_report
    from varbench.orchestrator.settings import resolve_settings

    settings = resolve_settings(workdir, db, tracking)
    rep = publish_report(settings, sweep, Path(out) if out else None, n_boot=boot, log=log)
    for f in rep.fits:
        if f.ok:
            _console().print(f"{f.group}: β = {_fmt_ci(f.beta, f.beta_ci)}, γ = {_fmt_ci(f.gamma, f.gamma_ci)}"
                          f" from {f.n_points} points" + (f" ({f.note})" if f.note else ""), highlight=False)
        else:
            _console().print(f"{f.group}: no fit ({f.note})", highlight=False)
    _console().print(f"report: {rep.html_path}\nsummary: {rep.md_path}", highlight=False)


def _fmt_ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{v:.3g}"


@command
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

    base = load_spec(spec)
    settings = resolve_settings(workdir, db, tracking, base.storage, base.tracking)
    result = run_nightly(base, settings, address, date, n_boot=boot,
                         on_driver=lambda d: _run_with_progress(d, True))
    comp = result.comparison
    if comp.previous is None:
        _console().print(f"{result.sweep}: first night, nothing to compare", highlight=False)
    else:
        n_reg = sum(p.regression for p in comp.points) + len(comp.exponent_regressions)
        _console().print(f"{result.sweep} vs {comp.previous}: {n_reg} regression(s) outside the noise",
                      highlight=False)
        for p in comp.points:
            if p.regression:
                _console().print(f"  REGRESSION {p.cell} ε={p.eps:g}: N* {p.prev} -> {p.curr}", highlight=False)
        for line in comp.exponent_regressions:
            _console().print(f"  REGRESSION {line}", highlight=False)
    _console().print(f"report: {result.report.html_path}", highlight=False)
    if comp.regression and fail_on_regression:
        raise typer.Exit(1)


def main() -> None:
    from varbench.orchestrator.submit import load_shipped_secrets, use_token_if_given

    use_token_if_given()  # before Ray is imported: it reads the auth mode once
    load_shipped_secrets()  # in a submitted job: credentials from the shipped file
    try:
        app()
    finally:
        _exit_quickly()


def _exit_quickly() -> None:
    """Spare the interpreter's last garbage collection a graph it only throws away.

    After a sweep the process holds torch, Ray, MLflow, Optuna and SQLAlchemy;
    the collection Python runs as it exits walked all of it for 1-1.5 s after
    ``varbench run`` printed its frontier (py-spy: ``gc_collect_main``).
    ``gc.freeze`` moves every object to the permanent generation, which no
    collection visits. Objects are still released by their reference counts,
    and the process's files and connections close with it (a PostgreSQL store's
    server logged nothing new over such an exit). Only the console script does
    this, as the process ends: ``app`` run in-process (tests) is left alone.
    SQLite files written in WAL mode are checkpointed first (``store.checkpoint_wal``):
    their engines are never closed now, and closing is when SQLite does it."""
    import gc

    store = sys.modules.get("varbench.orchestrator.store")  # not imported: nothing opened
    if store is not None:
        store.checkpoint_wal()
    gc.freeze()


if __name__ == "__main__":
    main()
