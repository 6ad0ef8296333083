"""One set of constrained types for every trial setting.

The sweep spec (``sweeps.spec``) and ``varbench trial`` validate with these
same types, so both paths accept and refuse the same values. Defaults come
from ``workers.config.TrialConfig`` (``DEFAULTS``), never from here. Names
are checked against the registries, so a new target family or interpolation
is accepted everywhere the moment it is registered.

A new TrialConfig field needs nothing here to be settable; give it a type in
``TYPES`` only when it has bounds or a registry.
"""

from __future__ import annotations

import typing
from collections.abc import Collection
from dataclasses import fields
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, create_model

from varbench.models.attention import BACKENDS
from varbench.models.config import INITS, POS_CODES
from varbench.models.families import FAMILIES
from varbench.models.flowar import HEADS, SOLVERS, SOURCES
from varbench.models.inputs import INPUTS
from varbench.models.interp import INTERPOLATIONS
from varbench.models.schedule import max_scales
from varbench.models.targets import TARGETS
from varbench.workers.config import TrialConfig
from varbench.workers.engine import MATMUL_PRECISIONS, STEP_MODES
from varbench.workers.errors import UserError
from varbench.workers.training import resolve_device

DEFAULTS = TrialConfig()
MAX_EPS = 100  # ε values in one grid


def known(value: str, registry: Collection[str], what: str) -> str:
    """A registry name, or a ValueError that lists the known ones."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(sorted(registry))}")
    return value


def Name(registry: Collection[str], what: str) -> Any:  # noqa: N802 - a type factory
    """A str that must be one of a registry's names."""
    return Annotated[str, AfterValidator(lambda v: known(v, registry, what))]


def _p(value: object) -> object:
    return float("inf") if isinstance(value, str) and value.strip().lower() == "inf" else value


def _device(value: str) -> str:
    head, _, index = value.partition(":")
    if value in ("auto", "cpu") or (head == "cuda" and (not index or index.isdigit())):
        return value
    raise ValueError(f"unknown device {value!r}; use auto, cpu or cuda[:N]")


def _flow_eval(value: str) -> str:
    steps, sep, solver = value.partition(":")
    if not sep or not steps.isdigit() or not 1 <= int(steps) <= 1024 or solver not in SOLVERS:
        raise ValueError(f"flow eval {value!r} is not STEPS:SOLVER (1..1024 steps; solver one "
                         f"of {', '.join(SOLVERS)})")
    return value


def _eps_grid(values: list[float]) -> list[float]:
    return sorted(set(values), reverse=True)


LR_CHOICES = ("fixed", "rule", "searched")  # how a trial's lr was chosen (TrialConfig.lr_choice)

PosInt = Annotated[int, Field(ge=1, le=1_000_000)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Side = Annotated[int, Field(ge=1, le=64)]  # s_last 64: 5,000+ tokens of attention
Width = Annotated[int, Field(ge=1, le=4096)]
Small = Annotated[int, Field(ge=1, le=64)]  # heads, depth, FFN ratio, channels, replicas
EpsGrid = Annotated[list[PosFloat], Field(min_length=1, max_length=MAX_EPS),
                    AfterValidator(_eps_grid)]
PNorm = Annotated[float, BeforeValidator(_p), Field(ge=1)]  # 1, 2, ... or inf

Family = Name(FAMILIES, "model family")
TargetName = Name(TARGETS, "target family")
InputDist = Name(INPUTS, "input distribution")
Interp = Name(INTERPOLATIONS, "interpolation")
FlowSteps = Annotated[int, Field(ge=1, le=1024)]
FlowSolver = Name(SOLVERS, "flow solver")
BatchSize = Annotated[int, Field(ge=1, le=65536)]
Count0 = Annotated[int, Field(ge=0, le=1_000_000)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NEval = Annotated[int, Field(ge=2, le=10_000_000)]

# the constrained type of each TrialConfig field that has bounds or a registry
TYPES: dict[str, Any] = {
    "model": Family,
    "target": TargetName,
    "lipschitz": PosFloat,
    "channels": Small,
    "s_first": Side,
    "s_last": Side,
    "inputs": InputDist,
    "target_seed": Seed,
    "width": Width,
    "scales": Small,
    "interp": Interp,
    "heads": Small,
    "depth": Small,
    "ffn_ratio": Small,
    "pos": Name(POS_CODES, "position code"),
    "init": Name(INITS, "initialisation"),
    "flow_steps": FlowSteps,
    "flow_solver": FlowSolver,
    "flow_source": Name(SOURCES, "flow source"),
    "flow_sigma": PosFloat,
    "flow_head": Name(HEADS, "flow head"),
    "flow_evals": list[Annotated[str, AfterValidator(_flow_eval)]],
    "steps": PosInt,
    "batch_size": BatchSize,
    "lr": PosFloat,
    "lr_choice": Name(LR_CHOICES, "lr choice"),
    "warmup": Count0,
    "weight_decay": NonNeg,
    "grad_clip": NonNeg,
    "eval_every": PosInt,
    "n_eval": NEval,
    "p": PNorm,
    "eps": EpsGrid,
    "seed": Seed,
    "replicas": Small,
    "bar": Annotated[float, Field(ge=0, allow_inf_nan=False)] | None,
    "backend": Name(BACKENDS, "attention backend"),
    "device": Annotated[str, AfterValidator(_device)],
    "step_mode": Name(STEP_MODES, "step mode"),
    "matmul_precision": Name(MATMUL_PRECISIONS, "matmul precision"),
}


def shape_problems(*, s_first: int, s_last: int, scales: int | None = None,
                   width: int | None = None, heads: int | None = None,
                   family: str | None = None) -> list[tuple[str, str]]:
    """The rules that tie fields together, as (field, problem); shared by both paths."""
    if s_last < s_first:
        return [("s_last", f"must be >= s_first ({s_first}), got {s_last}")]
    out = []
    k_max = max_scales(s_first, s_last)
    if scales is not None and (scales > k_max or (scales == 1 and s_first != s_last)):
        out.append(("scales", f"must be in 2..{k_max} for sides {s_first}->{s_last}"))
    if family == "flowar" and scales is not None and scales < 2:
        out.append(("scales", "FlowAR needs at least 2 scales"))
    if width is not None and heads is not None and width % heads:
        out.append(("heads", f"width {width} is not divisible by {heads} heads"))
    return out


def _plain(default: Any) -> Any:
    return list(default) if isinstance(default, tuple) else default


def _trial_settings_model():
    hints = typing.get_type_hints(TrialConfig)
    return create_model(
        "TrialSettings",
        __config__={"extra": "forbid", "frozen": True},
        **{f.name: (TYPES.get(f.name, hints[f.name]), _plain(getattr(DEFAULTS, f.name)))
           for f in fields(TrialConfig)},
    )


TrialSettings = _trial_settings_model()


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_trial_config(**settings: Any) -> TrialConfig:
    """Validate trial settings (the ``varbench trial`` path) and build the config.

    Raises UserError naming the first field at fault, as its command-line option.
    """
    try:
        s = TrialSettings.model_validate(settings)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else "settings"
        if e["type"] == "extra_forbidden":
            raise UserError(f"--set {field}", "not a trial setting") from None
        raise UserError(option_name(field), e["msg"].removeprefix("Value error, ")) from None
    values = s.model_dump()
    for field, problem in shape_problems(s_first=s.s_first, s_last=s.s_last, scales=s.scales,
                                         width=s.width, heads=s.heads, family=s.model):
        raise UserError(option_name(field), problem)
    if s.flow_evals and s.model != "flowar":
        raise UserError("--set flow_evals", "inference settings exist only for FlowAR "
                        f"(this trial's model is {s.model})")
    if s.backend == "flex" and resolve_device(s.device).type == "cpu":
        raise UserError("--backend", "flex has no backward pass on CPU in this PyTorch; "
                        "use auto, sdpa or reference (or --device cuda)")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device", f"{s.device} asked for, but torch {torch.__version__} "
                        "sees no CUDA device here; use --device cpu")
    values["eps"] = tuple(values["eps"])
    values["flow_evals"] = tuple(values["flow_evals"])
    return TrialConfig(**values)
