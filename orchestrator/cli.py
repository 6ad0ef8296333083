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

from orchestrator.errors import UserError

app = typer.Typer(
    name="varbench",
    help="Find the smallest VAR / FlowAR transformer that reaches each accuracy ε.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """varbench: measure the smallest VAR / FlowAR model that reaches each ε, for each L."""


def fail(exc: Exception) -> None:
    """Turn a user error into one line and exit 2, a failed run into exit 1."""
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
    backend: Annotated[str, typer.Option(help="Attention backend: auto, reference, sdpa, flex.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one trial (for debugging and sanity checks) and print its result."""
    from workers.validate import build_trial_config

    try:
        cfg = build_trial_config(
            model=model, target=target, lipschitz=lipschitz, channels=channels,
            s_first=s_first, s_last=s_last, inputs=inputs, width=width, scales=scales,
            interp=interp, heads=heads, depth=depth, ffn_ratio=ffn_ratio,
            layernorm=layernorm, flow_steps=flow_steps, flow_solver=flow_solver,
            steps=steps, batch_size=batch_size, lr=lr, eps=_parse_eps(eps), p=p,
            n_eval=n_eval, seed=seed, backend=backend, device=device,
        )
    except UserError as exc:
        fail(exc)
    from workers.trial import run_trial

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
