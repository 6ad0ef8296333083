"""How a worker runs its training step on its device: eager, compiled, or
compiled with CUDA graphs, and at which float32 matmul precision.

A tiny model's step is launch-bound on a GPU (issue 11, H200: 3.97 ms at
width 32, 4.14 ms at width 256), so the whole step (forward, loss, backward,
clipping, optimizer) can run through ``torch.compile``; ``graphs`` adds
``mode="reduce-overhead"`` (CUDA graphs: one replay per step). Compiling costs
seconds to a minute per process and shape, so ``auto`` picks the mode with
the least total time (compile + steps x step time) from measured figures kept
in one place (``STEP_MEASURED``, rule in ``choose_step_mode``), as
``models.attention.choose_backend`` does for attention.

No GPU figures exist yet, so ``auto`` is ``eager`` everywhere until
``make bench-gpu`` fills ``STEP_MEASURED`` (README, GPU section). The same
holds for TF32: ``matmul_precision`` stays ``highest`` until the benchmark
shows err does not move beyond its interval with ``high``.

Imports only torch (the GPU check runs with nothing else).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

STEP_MODES = ("auto", "eager", "compiled", "graphs")
MATMUL_PRECISIONS = ("highest", "high")  # "high": TF32 tensor cores on CUDA
TIE = 1.10  # a mode within 10% of the fastest total counts as equally fast
STEP_PREFERENCE = ("eager", "compiled", "graphs")  # among equals: least machinery first


@dataclass(frozen=True)
class StepMeasured:
    """One training step of a width-``width`` theorem-form trial, per mode:
    milliseconds per step and seconds of compilation (first step)."""

    device: str  # "cpu" or "cuda"
    width: int
    ms: dict[str, float]
    compile_s: dict[str, float]
    source: str


# Every figure ``auto`` decides from; add rows from `make bench-gpu` (section 2).
# Empty: no GPU has run the compiled step yet, so ``auto`` is eager everywhere.
STEP_MEASURED: tuple[StepMeasured, ...] = ()


def choose_step_mode(device: str, width: int, steps: int,
                     table: tuple[StepMeasured, ...] = STEP_MEASURED) -> str:
    """The step mode ``auto`` runs: least total time for ``steps`` steps.

    At the nearest measured width (in log) on the same device kind, each
    mode's total is its compile time plus ``steps`` times its step time;
    modes within ``TIE`` of the least count as equal and ``STEP_PREFERENCE``
    breaks the tie, so compilation is paid only for a real gain. No figures
    for the device kind: ``eager``. ``graphs`` is never chosen off CUDA.
    """
    rows = [m for m in table if m.device == device]
    if not rows:
        return "eager"
    near = min(rows, key=lambda m: abs(math.log(m.width / width)))
    total = {mode: near.compile_s.get(mode, 0.0) + steps * near.ms[mode] / 1000
             for mode in near.ms if mode != "graphs" or device == "cuda"}
    best = min(total.values())
    for mode in STEP_PREFERENCE:
        if mode in total and total[mode] <= best * TIE:
            return mode
    raise AssertionError("unreachable: the fastest mode is within TIE of itself")


def resolve_step_mode(step_mode: str, device: torch.device, model: str, width: int,
                      steps: int) -> str:
    """The mode a trial runs, recorded in its result: ``auto`` decided by the table;
    ``graphs`` off CUDA is ``compiled`` (CUDA graphs need CUDA); FlowAR runs eager
    (its loss draws flow times inside the model, which compiled code would draw
    from Inductor's generator instead; its compiled step is not tested yet)."""
    if step_mode not in STEP_MODES:
        raise ValueError(f"unknown step mode {step_mode!r}; known: {list(STEP_MODES)}")
    if model != "var":
        return "eager"
    mode = choose_step_mode(device.type, width, steps) if step_mode == "auto" else step_mode
    return "compiled" if mode == "graphs" and device.type != "cuda" else mode


def compiled(fn: Callable, mode: str) -> Callable:
    """``fn`` run in a step mode: itself (eager), or a new ``torch.compile`` of it.

    One compile call per trial, each with its own recompile region
    (``isolate_recompiles``, torch >= 2.13): the step functions take the model
    and optimizer as arguments, Dynamo guards on the optimizer object, and a
    finished trial's dead entries would otherwise count against the shared
    limit of 8 recompiles (measured on CPU: the 9th trial in one process fell
    back to an eager optimizer). Dynamo still caps all regions together at
    ``accumulated_recompile_limit`` (256) compiles per process. Inductor's
    on-disk cache makes a repeated shape's compile seconds, not a minute.
    """
    if mode == "eager":
        return fn
    kw = {"isolate_recompiles": True} if _ISOLATE else {}
    return torch.compile(fn, mode="reduce-overhead" if mode == "graphs" else None, **kw)


_ISOLATE = "isolate_recompiles" in inspect.signature(torch.compile).parameters


def mark_static(tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> None:
    """State a compiled step updates in place (a hand-written optimizer's moments):
    CUDA graphs keep it at fixed addresses instead of skipping the graph."""
    for t in tensors:
        torch._dynamo.mark_static_address(t)


@contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """float32 matmuls at ``name`` for the block, restored after it (a worker
    process runs many trials; one trial's setting must not leak to the next)."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {name!r}; known: {list(MATMUL_PRECISIONS)}")
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(name)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
