"""Search spaces: Optuna distributions per study, and trial params -> TrialConfig."""

from __future__ import annotations

import hashlib

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from varbench.models.interp import canonical_interp, distinct_interps
from varbench.models.schedule import scale_schedule
from varbench.sweeps.inference import cheapest, parse_key, settings_of
from varbench.sweeps.spec import ModelVariant, SweepSpec
from varbench.workers.config import TrialConfig

OPENABLE = ("heads", "depth", "ffn_ratio", "layernorm")  # fixed by a value, searched by a list
FIXED = ("init", "flow_source", "flow_sigma", "flow_head")  # set per variant, never searched


def search_space(spec: SweepSpec, variant: ModelVariant) -> dict[str, BaseDistribution]:
    """Distributions for one study: width, K, interpolation, and what the spec opens.

    FlowAR's flow_steps and solver are not here: they change inference only, so
    every trained FlowAR is scored at each of them instead (``flow_settings``).
    """
    s = spec.search
    k_lo, k_hi = spec.scale_range()
    space: dict[str, BaseDistribution] = {
        "width": IntDistribution(s.width.low, s.width.high, log=s.width.log),
        "scales": IntDistribution(k_lo, k_hi),
        "interp": CategoricalDistribution(interp_choices(spec)),
    }
    if s.lr is not None:
        space["lr"] = FloatDistribution(s.lr.low, s.lr.high, log=s.lr.log)
    for name in OPENABLE:
        value = getattr(variant, name)
        if isinstance(value, list):
            space[name] = CategoricalDistribution(list(value))
    return space


def flow_settings(spec: SweepSpec) -> list[str]:
    """FlowAR's inference settings ("steps:solver"), cheapest first: each trained
    model is scored at all of them, and each is its own frontier."""
    return settings_of(list(spec.search.flow_steps), list(spec.search.flow_solvers))


def _schedules(spec: SweepSpec) -> list[list[int]]:
    k_lo, k_hi = spec.scale_range()
    return [scale_schedule(spec.cells.s_first, spec.cells.s_last, k) for k in range(k_lo, k_hi + 1)]


def interp_choices(spec: SweepSpec) -> list[str]:
    """The spec's interpolation types less those that duplicate another at every K searched
    (``area`` is ``nearest`` at integer ratios): no trial is spent on a copy."""
    return distinct_interps(list(spec.search.interp), _schedules(spec))


def trial_seed(spec: SweepSpec, study_name: str, number: int) -> int:
    """A stable per-trial seed from the sweep seed, the study and the trial number."""
    blob = f"{spec.seed}:{study_name}:{number}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def trial_config(
    spec: SweepSpec,
    variant: ModelVariant,
    target: str,
    lipschitz: float,
    params: dict,
    seed: int,
    steps: int | None = None,
) -> TrialConfig:
    """Turn sampled params into a full TrialConfig (width rounded to a multiple of heads).

    The cell and the budget (``steps``: the cell's, default the spec's first) are
    TrialConfig fields by name; the variant fixes
    what the search leaves closed; the sampled params override the rest. The lr is
    the searched one where ``search.lr`` is given, else ``budget.lr_at(width)`` (the
    budget's lr, or its per-width rule; a spec cannot give both), and ``lr_choice``
    records which.
    """
    fixed = {name: getattr(variant, name) for name in OPENABLE + FIXED}
    chosen = {**fixed, **params}
    heads = int(chosen["heads"])
    if "interp" in chosen and "scales" in chosen:  # same pyramid at this K: one name for it
        sides = scale_schedule(spec.cells.s_first, spec.cells.s_last, int(chosen["scales"]))
        chosen["interp"] = canonical_interp(chosen["interp"], interp_choices(spec), sides)
    chosen["width"] = max(heads, int(round(params["width"] / heads)) * heads)
    # the lr: searched (the param, above), else the budget's at this width (its rule)
    chosen.setdefault("lr", spec.budget.lr_at(chosen["width"]))
    chosen["lr_choice"] = spec.lr_choice()["lr_choice"]
    if variant.family == "flowar":  # every inference setting, on the same trained weights
        keys = flow_settings(spec)
        chosen["flow_evals"] = tuple(keys)
        # The trial's own setting, which the early stop monitors, is the cheapest: the
        # stop fires once the monitor reaches the smallest ε, and the fewest flow steps
        # are (as a rule) the least accurate setting, so training goes on until even
        # the cheapest setting that is recorded as a frontier point has reached it; no
        # setting is cut short for another's sake. Each monitor pass is cheapest too.
        chosen["flow_steps"], chosen["flow_solver"] = parse_key(cheapest(keys))
    # one dict, later keys winning: a searched lr overrides the budget's (two ** of the
    # same key in the call raised TypeError, so no spec with search.lr could run a trial)
    fields = {**spec.cells.settings(), **spec.budget.for_steps(steps or spec.budget.step_list[0]),
              **chosen}
    return TrialConfig(model=variant.family, target=target, lipschitz=float(lipschitz),
                       **fields, eps=tuple(spec.eps), seed=seed)
