"""Validate trial settings at the edge, naming the field at fault."""

from __future__ import annotations

import math

from varbench.models.attention import BACKENDS
from varbench.models.families import FAMILIES
from varbench.models.inputs import INPUTS
from varbench.models.interp import INTERPOLATIONS
from varbench.models.schedule import max_scales
from varbench.models.targets import TARGETS
from varbench.workers.config import TrialConfig
from varbench.workers.errors import UserError

SOLVERS = ("euler", "heun")


def _one_of(field: str, value: str, known) -> None:
    if value not in known:
        raise UserError(field, f"unknown value {value!r}; choose one of {', '.join(sorted(known))}")


def _positive_int(field: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise UserError(field, f"must be an integer >= {minimum}, got {value!r}")


def build_trial_config(**settings) -> TrialConfig:
    """Check every field of a trial config and build it; raise UserError on the first problem."""
    s = dict(settings)
    _one_of("model", s["model"], FAMILIES)
    _one_of("target", s["target"], TARGETS)
    _one_of("interp", s["interp"], INTERPOLATIONS)
    _one_of("inputs", s["inputs"], INPUTS)
    _one_of("backend", s["backend"], BACKENDS)
    _one_of("flow_solver", s["flow_solver"], SOLVERS)
    if s["device"] not in ("auto", "cpu") and not str(s["device"]).startswith("cuda"):
        raise UserError("device", f"unknown device {s['device']!r}; use auto, cpu or cuda[:N]")
    lip = s["lipschitz"]
    if not (isinstance(lip, (int, float)) and math.isfinite(lip) and lip > 0):
        raise UserError("lipschitz", f"must be a positive finite number, got {lip!r}")
    for f in ("channels", "s_first", "s_last", "width", "scales", "heads", "depth",
              "ffn_ratio", "flow_steps", "steps", "batch_size", "n_eval", "replicas"):
        _positive_int(f, s[f], 2 if f == "n_eval" else 1)
    if s["s_last"] < s["s_first"]:
        raise UserError("s_last", f"must be >= s_first ({s['s_first']}), got {s['s_last']}")
    k_max = max_scales(s["s_first"], s["s_last"])
    if s["scales"] > k_max or (s["scales"] == 1 and s["s_first"] != s["s_last"]):
        raise UserError("scales", f"must be in 2..{k_max} for sides {s['s_first']}->{s['s_last']}")
    if s["model"] == "flowar" and s["scales"] < 2:
        raise UserError("scales", "FlowAR needs at least 2 scales")
    if s["width"] % s["heads"]:
        raise UserError("heads", f"width {s['width']} is not divisible by {s['heads']} heads")
    lr = s["lr"]
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError("lr", f"must be a positive finite number, got {lr!r}")
    try:
        p = float(s["p"])
    except (TypeError, ValueError):
        raise UserError("p", f"must be a number >= 1 or 'inf', got {s['p']!r}") from None
    if not p >= 1:
        raise UserError("p", f"must be a number >= 1 or 'inf', got {s['p']!r}")
    s["p"] = p
    eps = tuple(s["eps"])
    if not eps or any(not (isinstance(e, (int, float)) and math.isfinite(e) and e > 0) for e in eps):
        raise UserError("eps", "every ε must be a positive finite number")
    s["eps"] = tuple(sorted({float(e) for e in eps}, reverse=True))
    return TrialConfig(**s)
