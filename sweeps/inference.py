"""FlowAR inference settings: one training, one frontier per (steps, solver).

``flow_steps`` and ``flow_solver`` change how a trained FlowAR is integrated,
not what it learns, so the search never samples them: two trials that differ
only there would train the same weights. Instead every FlowAR trial trains
once and is scored at each setting of the spec (``search.flow_steps`` ×
``search.flow_solvers``; the worker's ``TrialConfig.flow_evals``), and each
setting is its own frontier, with its own inference FLOPs: N*(ε) per (steps,
solver) at no extra training.

The design, in the stores that exist (no migration):

- **Optuna**: one study per trained cell (model variant, target, L), as for
  VAR. It is told (N, the best err_ucb over the settings): a size where some
  setting reaches ε is one the search should know about. The setting that
  gave it, and every setting's err_ucb, are the trial's user attributes
  (``flow_setting``, ``flow_err_ucb``); ``told_error`` is the one definition,
  used at the tell and again when a resume tells a recorded trial.
- **Primary setting**: the trial's own ``flow_steps``/``flow_solver`` are the
  cheapest setting (fewest velocity evaluations, ``cheapest``), which the
  training's early stop monitors. The study's ``vb_cells`` row (its MLflow
  parent run, its child runs: one per training) holds the trials scored at
  that setting, exactly as the worker returned them.
- **Other settings**: one more ``vb_cells`` row and MLflow parent run each,
  named like a study (``<sweep>:<label>:<target>:L=<L>``, ``label`` e.g.
  ``flowar-det · 4 steps euler``); their trial rows are the same trained
  models (same number, same N, same MLflow child run) scored at that setting
  (``setting_result``). They are written in the same transaction as the
  primary row, and a resume derives any that are missing from the primary
  row's stored result, so none is ever written twice or lost.
- **Readers** need nothing special: every ``vb_cells`` row of a FlowAR
  variant carries its setting in ``variant``, so ``varbench frontier``,
  ``status``, the report, the scaling fits and nightly comparisons group by
  setting as they group by variant.

A spec with one setting (one step count, one solver) has no extra rows: the
study's row is that setting's frontier.
"""

from __future__ import annotations

import math

from varbench.models.flowar import SOLVERS
from varbench.workers.config import parse_flow_eval

# velocity evaluations per integration step, per solver (Heun evaluates twice)
EVALS_PER_STEP = {"euler": 1, "heun": 2}
assert set(EVALS_PER_STEP) == set(SOLVERS), "a new solver needs its cost here"


def setting_key(steps: int, solver: str) -> str:
    """``4:euler``: the form ``TrialConfig.flow_evals`` takes."""
    return f"{int(steps)}:{solver}"


parse_key = parse_flow_eval  # "4:euler" -> (4, "euler"), the worker's own reading


def cost(key: str) -> int:
    """Velocity evaluations per scale: what inference FLOPs grow with."""
    steps, solver = parse_key(key)
    return steps * EVALS_PER_STEP[solver]


def settings_of(flow_steps: list[int], flow_solvers: list[str]) -> list[str]:
    """Every (steps, solver) of a spec, cheapest first (ties: fewer steps first)."""
    keys = {setting_key(k, s) for k in flow_steps for s in flow_solvers}
    return sorted(keys, key=lambda k: (cost(k), parse_key(k)))


def cheapest(keys: list[str]) -> str:
    """The setting training's early stop monitors: the fewest evaluations."""
    return min(keys, key=lambda k: (cost(k), parse_key(k)))


def setting_label(variant_label: str, key: str) -> str:
    """``flowar-det · 4 steps euler``: what a setting's frontier is called everywhere."""
    steps, solver = parse_key(key)
    return f"{variant_label} · {steps} step{'s' if steps != 1 else ''} {solver}"


def setting_cell_name(sweep: str, variant_label: str, key: str, target: str,
                      lipschitz: float) -> str:
    """A setting's cell, named as a study would be (sweep:label:target:L)."""
    return f"{sweep}:{setting_label(variant_label, key)}:{target}:L={lipschitz:g}"


def _num(x) -> float:
    """A stored error as a float (the store keeps inf/nan as strings in JSON)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _evals(result: dict) -> dict[str, dict]:
    return {setting_key(e["flow_steps"], e["flow_solver"]): e
            for e in result.get("flow_evals") or []}


def told_error(result: dict) -> tuple[float | None, str | None]:
    """What Optuna is told for a trial: its err_ucb, or for a FlowAR trial scored at
    several settings the best err_ucb over them (ties: the cheaper setting), with
    the setting that gave it."""
    evals = {k: _num(e["err_ucb"]) for k, e in _evals(result).items()}
    evals = {k: v for k, v in evals.items() if math.isfinite(v)}
    if result.get("status") != "completed" or not evals:
        return result.get("err_ucb"), None
    key = min(evals, key=lambda k: (evals[k], cost(k), parse_key(k)))
    return evals[key], key


def setting_result(result: dict, key: str) -> dict | None:
    """The trial as scored at setting ``key``: its error, UCB, relative error,
    ``reached`` and inference FLOPs from ``flow_evals``, its config naming the
    setting; everything else (N, status, steps run, curves) is the training's.
    A trial that did not complete keeps its status (a pruned one still bounds
    censored points). None when a completed trial was not scored at ``key``.
    """
    out = dict(result)
    steps, solver = parse_key(key)
    out["config"] = {**(result.get("config") or {}), "flow_steps": steps, "flow_solver": solver}
    out["flow_setting"] = key
    out["flow_evals"] = []  # the primary row holds them all
    if result.get("status") != "completed":
        return out
    e = _evals(result).get(key)
    if e is None:
        return None
    if not math.isfinite(_num(e["err_ucb"])):  # as the trial's own evaluation would end
        out.update(status="failed", reason=f"non-finite evaluation error at {key}",
                   err=None, err_ucb=None, rel_err=None, reached={}, flops=e["flops"])
        return out
    out.update(err=e["err"], err_ucb=e["err_ucb"], rel_err=e["rel_err"], flops=e["flops"],
               reached=dict(e["reached"]))
    out["replica_err_ucb"] = list(e.get("replica_err_ucb") or [])
    return out
