"""Ray remote wrappers: plain dicts in, plain dicts out, no connections held.

Fault injection, off unless set: ``VARBENCH_FAULT_KILL`` = "<study>#<number>"
kills the worker process on that trial's first attempt, remembered by a
marker file in ``VARBENCH_FAULT_DIR``. The driver forwards both variables to
the tasks' environment (tests of worker death).
"""

from __future__ import annotations

import os
import time

import ray
import torch

from varbench.models.reference import reference_errors
from varbench.models.targets import empirical_lipschitz, make_target
from varbench.workers.config import TrialConfig
from varbench.workers.population import run_population
from varbench.workers.training import train_one
from varbench.workers.trial import run_trial

FAULT_KILL, FAULT_DIR = "VARBENCH_FAULT_KILL", "VARBENCH_FAULT_DIR"
FAULT_VARS = (FAULT_KILL, FAULT_DIR)


def _maybe_die(key: str) -> None:
    marker_dir = os.environ.get(FAULT_DIR)
    if os.environ.get(FAULT_KILL) != key or not marker_dir:
        return
    safe = "".join(ch if ch.isalnum() else "_" for ch in key)
    marker = os.path.join(marker_dir, f"{safe}.killed")
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("killed once\n")
        os._exit(1)


@ray.remote
def warm_task() -> float:
    """Pay a fresh worker's one-time costs while the driver is still setting up:
    unpickling this task imported torch and our modules. Where a GPU is visible the
    trials use ``torch.optim.AdamW``, whose first construction imports TorchDynamo
    (``torch.optim`` wraps ``add_param_group`` in its disable decorator), 0.9-1.5 s:
    that is paid here too. A CPU trial never imports it (``workers.optim``).
    Returns the seconds taken past the imports."""
    t = time.perf_counter()
    if torch.cuda.is_available():
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    return time.perf_counter() - t


@ray.remote
def trial_task(cfg: dict, threads: int = 1, key: str = "") -> dict:
    """Run one trial in a Ray worker and return its result as a dict."""
    torch.set_num_threads(max(1, threads))
    _maybe_die(key)
    return run_trial(TrialConfig.from_dict(cfg)).to_dict()


@ray.remote
def checkpoint_task(cfg: dict, threads: int = 1, key: str = "",
                    resume: bytes | None = None,
                    pause_at: int | None = None) -> tuple[dict, bytes | None]:
    """One trial that hands its state back beside its result: its final state
    (``keep_checkpoint``), or where it paused (``pause_at``, a multi-fidelity
    rung); or that continues from such a state (``resume``: the bytes the driver
    kept, so a worker needs no shared file system). Always one model alone:
    populations keep no checkpoints."""
    torch.set_num_threads(max(1, threads))
    _maybe_die(key)
    res = train_one(TrialConfig.from_dict(cfg), resume=resume, pause_at=pause_at)
    return res.to_dict(), res.checkpoint


@ray.remote
def population_task(cfgs: list[dict], threads: int = 1, keys: list[str] | None = None) -> list[dict]:
    """Several trials of one shape trained together; one result dict per config."""
    torch.set_num_threads(max(1, threads))
    for key in keys or []:
        _maybe_die(key)
    results = run_population([TrialConfig.from_dict(c) for c in cfgs])
    return [r.to_dict() for r in results]


@ray.remote
def reference_task(target: str, lipschitz: float, channels: int, s_first: int, s_last: int,
                   target_seed: int, inputs: str, p: float, seed: int = 0) -> dict:
    """The cell's reference errors (best affine map, interpolate-and-scale), each with
    its 95% interval, from samples drawn with the cell's ``seed``."""
    torch.set_num_threads(1)
    t = make_target(target, lipschitz, channels, s_first, s_last, target_seed)
    refs = reference_errors(t, inputs=inputs, p=p, seed=seed)
    out = {k: {"err": v.err, "err_ucb": v.err_ucb, "rel_err": v.rel_err, "err_lo": v.err_lo,
               "err_hi": v.err_hi, "n": v.n, "seed": seed} for k, v in refs.items()}
    # the certified L labels the cell; the measured one (a lower bound) sits beside it
    out["lipschitz"] = {"certified": float(t.certified_lipschitz),
                        "empirical": float(empirical_lipschitz(t))}
    return out
