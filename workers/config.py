"""Plain, JSON-serialisable trial configs and results.

``TrialConfig`` is the one home of every trial setting and its default: the
sweep spec (``sweeps.spec``), the search space and the ``varbench trial``
options read their defaults from it, and the model's own config is derived
from it. The architecture defaults are the theorem's model, as
``models.config.VARConfig`` states them; they are read from there, not repeated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from varbench.models.config import (  # torch-free: the CLI reads these defaults
    DEFAULT_P,
    FLOW_HEAD,
    FLOW_SIGMA,
    FLOW_SOLVER,
    FLOW_SOURCE,
    FLOW_STEPS,
    VARConfig,
)

DEFAULT_EPS = (0.1, 0.03, 0.01, 0.003, 0.001)
_MODEL = VARConfig()  # the theorem's model: 1 head, 1 layer, FFN ratio 4, no LayerNorm
MODEL_FIELDS = tuple(f.name for f in fields(VARConfig))


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: a cell, a model, a budget and a seed."""

    # cell
    model: str = "var"
    target: str = "mlp"
    lipschitz: float = 1.0
    channels: int = _MODEL.channels
    s_first: int = _MODEL.s_first
    s_last: int = _MODEL.s_last
    inputs: str = "uniform"
    target_seed: int = 0
    # model
    width: int = _MODEL.width
    scales: int = _MODEL.scales
    interp: str = _MODEL.interp
    heads: int = _MODEL.heads
    depth: int = _MODEL.depth
    ffn_ratio: int = _MODEL.ffn_ratio
    layernorm: bool = _MODEL.layernorm
    pos: str = _MODEL.pos
    init: str = _MODEL.init
    flow_steps: int = FLOW_STEPS
    flow_solver: str = FLOW_SOLVER
    flow_source: str = FLOW_SOURCE  # FlowAR's z₀: "interp" (gain·φ(ŷ), deterministic) or "noise"
    flow_sigma: float = FLOW_SIGMA  # the noise source's σ
    flow_head: str = FLOW_HEAD  # FlowAR's velocity head: "mlp" (per token) or "transformer"
    # more FlowAR inference settings, "steps:solver", evaluated on the same trained weights
    flow_evals: tuple[str, ...] = ()
    # budget and optimisation
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-2  # the lr this trial trains at (peak of the schedule)
    # how ``lr`` was chosen (recorded in the recipe): "fixed" (one lr for every width),
    # "rule" (the spec's per-width rule, sweeps.spec.LrRule) or "searched"
    lr_choice: str = "fixed"
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    n_eval: int = 4096
    p: float = DEFAULT_P
    eps: tuple[float, ...] = DEFAULT_EPS
    seed: int = 0
    replicas: int = 1  # seeds trained together; the trial reports the best and the spread
    # stop a trial that can no longer move the frontier (workers.stopping); off by default:
    # on quick.yaml it stopped the one trial that went on to set N* at ε = 0.035 (README)
    prune: bool = False
    bar: float | None = None  # the error it must beat to matter; the driver sets it
    # stop once the monitor shows the smallest ε of the grid reached; a convergence
    # check trains its whole budget (an early stop would hide whether the error moves)
    early_stop: bool = True
    # hand back the trained state (``TrialResult.checkpoint``) even when the trial ended
    # for good, so the driver can keep it and continue the trial at a larger budget
    # (convergence checks, multi-fidelity); such a trial trains alone, never in a population
    keep_checkpoint: bool = False
    backend: str = _MODEL.backend
    device: str = "auto"
    # how the training step runs (workers.engine): "eager", "compiled" (torch.compile of
    # the whole step), "graphs" (compiled with CUDA graphs; "compiled" off CUDA) or "auto"
    # (least total time from measured figures: eager until a GPU run fills the table)
    step_mode: str = "auto"
    # float32 matmuls: "highest", or "high" (TF32 on CUDA); highest until a GPU run shows
    # err stays within its interval with TF32 (benchmarks/gpu_bench.py, section 3)
    matmul_precision: str = "highest"

    def var_config(self) -> VARConfig:
        """The model's config: the fields the two share, by name."""
        return VARConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    def family_options(self) -> dict:
        """Settings a model family may take beyond its VARConfig (FlowAR's flow)."""
        return {"flow_steps": self.flow_steps, "flow_solver": self.flow_solver,
                "flow_source": self.flow_source, "flow_sigma": self.flow_sigma,
                "flow_head": self.flow_head}

    @property
    def variant_name(self) -> str:
        """What the trial measured, in words: ``var``, ``flowar-det`` or ``flowar-noise``
        (``-transformer`` added for FlowAR's attention velocity head)."""
        if self.model != "flowar":
            return self.model
        name = "flowar-det" if self.flow_source == "interp" else "flowar-noise"
        return name + ("-transformer" if self.flow_head == "transformer" else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = list(self.eps)
        d["flow_evals"] = list(self.flow_evals)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown trial config fields: {', '.join(unknown)}")
        d = dict(d)
        if "eps" in d:
            d["eps"] = tuple(float(e) for e in d["eps"])
        if "flow_evals" in d:
            d["flow_evals"] = tuple(d["flow_evals"])
        return cls(**d)


def parse_flow_eval(text: str) -> tuple[int, str]:
    """ "4:heun" -> (4, "heun"): one entry of ``TrialConfig.flow_evals``."""
    steps, _, solver = text.partition(":")
    return int(steps), solver


CURVE_POINTS = 100  # about this many loss points per curve, whatever the step budget


def curve_every(steps: int) -> int:
    """The loss is averaged over windows of this many steps (k), so a curve stays compact."""
    return max(1, -(-steps // CURVE_POINTS))


@dataclass
class Curve:
    """A compact learning curve: (step, value) pairs per series.

    ``loss``: the training loss averaged over each window of ``curve_every``
    steps; ``monitor_err_ucb``: the monitor batch's err_ucb every
    ``eval_every`` steps; ``lr``: the learning rate at the loss points.
    """

    every: int = 1
    loss: list[tuple[int, float]] = field(default_factory=list)
    monitor_err_ucb: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    _sum: float = 0.0
    _n: int = 0

    def add_loss(self, step: int, loss: float, lr: float) -> None:
        self._sum += loss
        self._n += 1
        if step % self.every == 0:
            self.flush(step, lr)

    def flush(self, step: int, lr: float) -> None:
        """Close the open window at ``step`` (the last, partial one at the trial's end)."""
        if self._n:
            self.loss.append((step, self._sum / self._n))
            self.lr.append((step, lr))
            self._sum, self._n = 0.0, 0

    def to_dict(self) -> dict:
        return {"every": self.every, "loss": [list(p) for p in self.loss],
                "monitor_err_ucb": [list(p) for p in self.monitor_err_ucb],
                "lr": [list(p) for p in self.lr]}


@dataclass
class TrialResult:
    """What a worker returns; the driver records it."""

    status: str  # "completed", "failed", or "pruned" (stopped: could not move the frontier)
    reason: str = ""
    err: float | None = None
    err_ucb: float | None = None
    rel_err: float | None = None
    n_params: int = 0
    n_params_eff: int = 0  # N less provably redundant parameters (models.var.redundant_params)
    flops: int = 0
    width: int = 0
    steps_run: int = 0
    seconds: float = 0.0
    sec_per_step: float = 0.0
    final_loss: float | None = None
    reached: dict[str, bool] = field(default_factory=dict)
    device: str = "cpu"
    replica_err_ucb: list[float | None] = field(default_factory=list)
    population: int = 1  # how many models trained together in the step loop
    step_mode: str = "eager"  # the step mode that ran (``auto`` resolved, workers.engine)
    matmul_precision: str = "highest"  # the float32 matmul precision it ran at
    compile_seconds: float = 0.0  # the first step's time where it compiled (not in sec_per_step)
    monitor_err: float | None = None  # the last monitor err_ucb (what a pruned trial reached)
    pruned_at: int | None = None  # step the stopping rule fired (also when only observed)
    # stopped at ``train_one(pause_at=)``, state in ``checkpoint``: not a final result (the
    # driver judges it at a rung by ``monitor_err`` and continues or prunes it)
    paused: bool = False
    # learning curves, one per replica (``Curve.to_dict``): the trial's own first
    curves: list[dict] = field(default_factory=list)
    # FlowAR: the trained model at each of cfg.flow_evals, each {flow_steps, flow_solver,
    # err, err_ucb, rel_err, flops, reached} (one training, several inference settings;
    # with replicas, the best replica at each setting and every replica's replica_err_ucb)
    flow_evals: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    # the training recipe the result is conditional on (``workers.training.recipe``):
    # steps planned and run, batch size, lr and its schedule, where a continuation began
    recipe: dict = field(default_factory=dict)

    # a paused trial's state (workers.training.train_one); bytes, never in the stores
    checkpoint: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("checkpoint")
        return d

    @property
    def spread(self) -> float | None:
        """Range of err_ucb over the replicas (None with fewer than 2 finished)."""
        errs = [e for e in self.replica_err_ucb if e is not None]
        return max(errs) - min(errs) if len(errs) > 1 else None

