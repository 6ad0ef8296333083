"""The sweep spec: a YAML file validated once, at the edge, by pydantic.

Everything downstream trusts these types. An invalid spec fails before any
work with one line per problem, each naming the field (``spec_errors``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from varbench.models.config import INITS
from varbench.models.flowar import HEADS, SOURCES
from varbench.models.interp import INTERPOLATIONS
from varbench.models.schedule import max_scales

# the same constrained types validate `varbench trial` (sweeps.fields)
from varbench.sweeps.fields import (
    DEFAULTS,
    BatchSize,
    Count0,
    EpsGrid,
    Family,
    FlowSolver,
    FlowSteps,
    InputDist,
    Interp,
    Name,
    NEval,
    NonNeg,
    PNorm,
    PosFloat,
    PosInt,
    Seed,
    Side,
    Small,
    TargetName,
    Width,
    shape_problems,
)
from varbench.sweeps.redact import mask_url
from varbench.workers.errors import UserError
from varbench.workers.stopping import START, rung_steps

SAMPLERS = ("frontier", "tpe", "nsga2", "gp", "random", "grid")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelVariant(Strict):
    """One model family with fixed or searched architecture settings.

    An int fixes a setting; a list opens it to the search ("beyond the
    theorem"). Defaults are the theorem's model: 1 head, 1 layer, FFN ratio 4.
    """

    name: str | None = None
    family: Family = DEFAULTS.model
    heads: Small | list[Small] = DEFAULTS.heads
    depth: Small | list[Small] = DEFAULTS.depth
    ffn_ratio: Small | list[Small] = DEFAULTS.ffn_ratio
    layernorm: bool | list[bool] = DEFAULTS.layernorm
    init: Name(INITS, "initialisation") = DEFAULTS.init
    flow_source: Name(SOURCES, "flow source") = DEFAULTS.flow_source  # FlowAR only
    flow_sigma: PosFloat = DEFAULTS.flow_sigma  # FlowAR's noise source only
    flow_head: Name(HEADS, "flow head") = DEFAULTS.flow_head  # FlowAR only

    @field_validator("heads", "depth", "ffn_ratio", "layernorm")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an opened setting needs at least one value")
        return v

    @property
    def label(self) -> str:
        """The name, or what it measures: ``var``, ``flowar-det`` or ``flowar-noise``."""
        if self.name:
            return self.name
        if self.family == "flowar":
            name = "flowar-det" if self.flow_source == "interp" else "flowar-noise"
            return name + ("-transformer" if self.flow_head == "transformer" else "")
        return self.family


class Cells(Strict):
    models: list[ModelVariant | str] = Field(min_length=1)
    targets: list[TargetName] = Field(min_length=1)
    lipschitz: list[PosFloat] = Field(min_length=1)
    channels: Small = DEFAULTS.channels
    s_first: Side = DEFAULTS.s_first
    s_last: Side = DEFAULTS.s_last
    inputs: InputDist = DEFAULTS.inputs
    target_seed: Seed = DEFAULTS.target_seed

    @field_validator("models")
    @classmethod
    def _variants(cls, v):
        out = [ModelVariant(family=m) if isinstance(m, str) else m for m in v]
        labels = [m.label for m in out]
        if len(set(labels)) != len(labels):
            raise ValueError("model variants need distinct names")
        return out

    @model_validator(mode="after")
    def _sides(self):
        for field, problem in shape_problems(s_first=self.s_first, s_last=self.s_last):
            raise ValueError(f"{field} {problem}")
        return self

    def settings(self) -> dict:
        """The TrialConfig fields a cell fixes (the rest of a cell is its key)."""
        return self.model_dump(exclude={"models", "targets", "lipschitz"})


MAX_BUDGETS = 8  # step budgets in one spec
MAX_RUNGS = 4  # pauses per trial


class LrRule(Strict):
    """The learning rate per width: lr(d) = budget.lr x (d / ref_width) ** exponent.

    ``budget.lr`` is then the lr at ``ref_width``; each trial trains at the rule's lr
    for its width (``Budget.lr_at``), recorded as its ``lr``. benchmarks/lr_width.py
    measures the best lr per width and fits the exponent (README, "The learning rate
    per width")."""

    ref_width: Width = 32
    exponent: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]


class Budget(Strict):
    """The training budget: every field but ``lr_rule`` and ``rungs`` is the TrialConfig
    field of that name (the rule sets each trial's ``lr`` from its width: ``lr_at``; the
    rungs are where the driver pauses each trial, ``orchestrator.rungs``).

    ``steps`` may list several budgets (``[400, 1600, 6400]``): each is its own
    cell (study), so results at different budgets never mix in one frontier.
    """

    steps: PosInt | list[PosInt] = DEFAULTS.steps
    batch_size: BatchSize = DEFAULTS.batch_size
    lr: PosFloat = DEFAULTS.lr
    # None: one lr for every width. Not a default rule: spec hashes leave defaults out,
    # so a new default would change the lr of sweeps that resume under the same hash
    lr_rule: LrRule | None = None
    warmup: Count0 = DEFAULTS.warmup
    weight_decay: NonNeg = DEFAULTS.weight_decay
    grad_clip: NonNeg = DEFAULTS.grad_clip
    eval_every: PosInt = DEFAULTS.eval_every
    n_eval: NEval = DEFAULTS.n_eval
    replicas: Small = DEFAULTS.replicas  # seeds per trial, trained together
    prune: bool = DEFAULTS.prune  # stop trials that can no longer move the frontier
    # multi-fidelity: fractions of the budget where the driver pauses each trial and
    # judges it against the bar as the frontier stands then (``orchestrator.rungs``);
    # a driver setting, not a TrialConfig field
    rungs: list[float] = Field(default_factory=list, max_length=MAX_RUNGS)
    p: PNorm = DEFAULTS.p

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v):
        if any(not START <= f < 1 for f in v):
            raise ValueError(f"each rung is a fraction of the budget in [{START:g}, 1): "
                             f"the stopping bound is measured from {START:g} on")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("rungs must increase")
        return v

    @model_validator(mode="after")
    def _rungs_apply(self):
        if not self.rungs:
            return self
        if not self.prune:
            raise ValueError("rungs need prune: true (a rung stops a trial by the stopping rule)")
        if self.replicas > 1:
            raise ValueError("rungs need replicas: 1 (seed replicas train as one population, "
                             "which does not pause)")
        for steps in self.step_list:  # each rung a pause of its own, before the end
            if len(rung_steps(self.rungs, steps, self.eval_every)) < len(self.rungs):
                raise ValueError(
                    f"rungs {self.rungs} at {steps} steps, rounded up to the monitor "
                    f"evaluations every {self.eval_every} steps, fall on the end or on one "
                    f"another: pause at {rung_steps(self.rungs, steps, self.eval_every)}")
        return self

    @field_validator("steps", mode="before")
    @classmethod
    def _whole_numbers(cls, v):
        # YAML's true/"60" are not step counts (pydantic would read them as 1 and 60)
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"a step budget is a whole number, or a list of them: got {x!r}")
        return v

    @field_validator("steps")
    @classmethod
    def _budgets(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("list at least one step budget")
            if len(v) > MAX_BUDGETS:
                raise ValueError(f"at most {MAX_BUDGETS} step budgets")
            if len(set(v)) != len(v):
                raise ValueError("step budgets must be distinct")
        return v

    @property
    def step_list(self) -> list[int]:
        """The step budgets, one or several."""
        return list(self.steps) if isinstance(self.steps, list) else [self.steps]

    def name_suffix(self, steps: int | None = None) -> str:
        """``:steps=<S>`` in the name of a cell trained for ``steps`` (default the first)
        when the spec lists several budgets; "" for a single budget, so a single-budget
        spec keeps the names its sweeps resume by."""
        if len(self.step_list) < 2:
            return ""
        return f":steps={steps if steps is not None else self.step_list[0]}"

    def for_steps(self, steps: int) -> dict:
        """The TrialConfig budget fields of the cell trained for ``steps`` (``lr`` is
        the budget's; ``trial_config`` applies the rule per width)."""
        return {**self.model_dump(exclude={"lr_rule", "rungs"}), "steps": steps}

    def lr_at(self, width: int) -> float:
        """The lr a trial of this width trains at: ``lr``, or the rule's (4 significant
        digits, so the recorded value reads as it is)."""
        if self.lr_rule is None:
            return self.lr
        r = self.lr_rule
        return float(f"{self.lr * (width / r.ref_width) ** r.exponent:.4g}")


class Check(Strict):
    """The convergence check (``sweeps.convergence``): after the main loop, each
    reached frontier point is retrained at ``factor`` times the budget (the
    largest failing trial below N* afresh, the N* trial continued from its
    checkpoint). Off by default; the nightly and paper specs turn it on."""

    enabled: bool = False
    factor: Annotated[int, Field(ge=2, le=8)] = 2


class _Range(Strict):
    @model_validator(mode="after")
    def _order(self):
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class IntRange(_Range):
    low: PosInt
    high: PosInt
    log: bool = False


class FloatRange(_Range):
    low: PosFloat
    high: PosFloat
    log: bool = True


class WidthRange(_Range):
    low: Width
    high: Width
    log: bool = True


class SearchSpace(Strict):
    width: WidthRange = WidthRange(low=4, high=256)
    scales: IntRange | None = None  # default: 2 .. the largest K for the sides
    interp: list[Interp] = Field(default_factory=lambda: sorted(INTERPOLATIONS),
                                      min_length=1)
    # FlowAR inference settings (never searched: every trained FlowAR is scored at each
    # steps x solver, and each is its own frontier; sweeps.inference)
    flow_steps: list[FlowSteps] = Field(default_factory=lambda: [1, 2, 4, 8],
                                              min_length=1, max_length=16)
    flow_solvers: list[FlowSolver] = Field(default_factory=lambda: [DEFAULTS.flow_solver],
                                           min_length=1)
    lr: FloatRange | None = None  # None: the budget's lr (or its per-width rule), not searched


class Resources(Strict):
    cpus: Annotated[float, Field(gt=0, le=1024, allow_inf_nan=False)] = 1.0
    gpus: Annotated[float, Field(ge=0, le=64, allow_inf_nan=False)] = 0.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 1


class SweepSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    seed: Seed = 0
    cells: Cells
    eps: EpsGrid
    budget: Budget = Budget()
    check: Check = Check()
    search: SearchSpace = SearchSpace()
    sampler: Name(SAMPLERS, "sampler") = "frontier"
    trials: PosInt = 20  # per study
    time_budget_s: PosFloat | None = None
    resources: Resources = Resources()
    storage: str | None = None  # results store and Optuna URL; default SQLite in the work dir
    tracking: str | None = None  # MLflow tracking URI; default SQLite in the work dir

    @model_validator(mode="after")
    def _scales(self):
        k_max = max_scales(self.cells.s_first, self.cells.s_last)
        sc = self.search.scales
        if sc is not None and sc.high > k_max:
            raise ValueError(f"search.scales.high {sc.high} exceeds {k_max}, the most scales between sides {self.cells.s_first} and {self.cells.s_last}")
        if k_max < 2:
            raise ValueError("cells.s_last must exceed cells.s_first (at least two scales)")
        return self

    @model_validator(mode="after")
    def _lr(self):
        if self.budget.lr_rule is not None and self.search.lr is not None:
            raise ValueError("budget.lr_rule: not used while search.lr is given (the search "
                             "sets every trial's lr); keep one of the two")
        return self

    def lr_choice(self) -> dict:
        """How each trial's lr is chosen, as recorded in every recipe: ``fixed`` (the
        budget's lr), ``rule`` (``Budget.lr_at``) or ``searched`` (the trial's param)."""
        b, s = self.budget, self.search.lr
        if s is not None:
            return {"lr_choice": "searched", "lr_range": s.model_dump()}
        if b.lr_rule is not None:
            return {"lr_choice": "rule", "lr_rule": b.lr_rule.model_dump()}
        return {"lr_choice": "fixed"}

    def scale_range(self) -> tuple[int, int]:
        k_max = max_scales(self.cells.s_first, self.cells.s_last)
        if self.search.scales is None:
            return 2, min(k_max, 4)
        return max(self.search.scales.low, 1), self.search.scales.high

    def redacted(self, **dump) -> dict:
        """The spec as JSON data with credentials masked: what is stored and hashed."""
        data = self.model_dump(mode="json", **dump)
        for key in ("storage", "tracking"):
            if data.get(key):
                data[key] = mask_url(data[key])
        return data

    def spec_hash(self) -> str:
        """Hash of what the spec says (defaults left out, so a new optional field
        in a later varbench does not orphan existing sweeps; passwords masked, so
        a rotated one does not make the same sweep "changed"; the ``check`` section
        left out, so a check can be turned on for a sweep that already ran)."""
        data = self.redacted(exclude_defaults=True)
        data.pop("check", None)  # checks add trials beside the sweep's, never change them
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def cell_keys(self) -> list[tuple[ModelVariant, str, float, int]]:
        """(variant, target, L, step budget): one study each."""
        return [(m, t, L, s) for m in self.cells.models for t in self.cells.targets
                for L in self.cells.lipschitz for s in self.budget.step_list]


def printable(text: str) -> str:
    """Escape control characters: a hostile key must not break the one-line rule."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


_BRANCH = re.compile(r"^[a-z]+(-[a-z]+)+$|^[a-z-]+\[.*\]$")


def _is_branch(part) -> bool:
    """A union branch pydantic names in a location (``constrained-int``,
    ``list[constrained-int]``): not a field a user wrote (an unknown key, even
    ``0`` or one with control characters, is still named)."""
    return isinstance(part, str) and bool(_BRANCH.match(part))


def _loc(err: dict) -> str:
    parts = [p for p in err["loc"] if not _is_branch(p)]
    return printable(".".join(str(p) for p in parts)) or "spec"


def spec_errors(exc: ValidationError) -> list[str]:
    """One line per problem, each starting with the field's dotted path.

    A field that takes one of several forms (``budget.steps``: a number or a
    list) fails once per form; only the most specific failure is shown (the
    deepest location: ``[0]`` fails as a list item, not as "not an integer")."""
    best: dict[tuple, dict] = {}
    for i, e in enumerate(exc.errors()):
        loc = e["loc"]
        cut = next((k for k, p in enumerate(loc) if _is_branch(p)), None)
        key = tuple(loc[:cut]) if cut is not None else (i,)  # a union's forms share one key
        if key not in best or len(loc) > len(best[key]["loc"]):
            best[key] = e
    return [_line(e) for e in best.values()]


_NAMED = re.compile(r"^[a-z_]+(\.[a-z_]+)+: ")  # a spec-wide check that names its field


def _line(err: dict) -> str:
    msg = printable(err["msg"].removeprefix("Value error, "))
    if not err["loc"] and _NAMED.match(msg):  # a check across sections: its field first
        return msg
    return f"{_loc(err)}: {msg}"


class SpecError(UserError):
    """An invalid spec: all its problems, one per line."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__(source, "; ".join(problems))
        self.source, self.problems = source, problems

    def lines(self) -> list[str]:
        return [f"{self.source}: {p}" for p in self.problems]


def parse_spec(data: object, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(source, ["spec: the top level must be a mapping of fields"])
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, spec_errors(exc)) from None
    except RecursionError:
        raise SpecError(source, ["spec: nested too deeply"]) from None


MAX_SPEC_BYTES = 1 << 20  # 1 MiB: a spec is a page of YAML, not a data file


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys (it keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {printable(str(key))!r} (first at line "
                        f"{seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the schema refuses it later
                pass
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line naming what is wrong and where: a refused tag by name, a duplicate key."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = printable(str(getattr(exc, "problem", "") or ""))
    if "constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip().strip("'\"").replace("tag:yaml.org,2002:", "!!")
        return (f"spec: the tag {tag!r}{where} is not allowed "
                "(specs are plain YAML: no !!python or other object tags)")
    if problem.startswith("duplicate key"):
        return f"spec: {problem}{where}"
    return f"spec: not valid YAML{where}" + (f" ({problem})" if problem else "")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML spec; raise SpecError naming every bad field.

    At most ``MAX_SPEC_BYTES`` are read (``/dev/zero`` is refused, not slurped),
    duplicate keys are refused, and so is every tag beyond plain YAML's.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UserError(str(path), f"cannot read spec ({exc.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"spec: larger than {MAX_SPEC_BYTES // 1024} KiB; "
                                    "a sweep spec is a short YAML file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [f"spec: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [_yaml_problem(exc)]) from None
    except RecursionError:
        raise SpecError(str(path), ["spec: nested too deeply"]) from None
    return parse_spec(data, str(path))
