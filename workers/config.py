"""Plain, JSON-serialisable trial configs and results."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from varbench.models.var import VARConfig

DEFAULT_EPS = (0.1, 0.03, 0.01, 0.003, 0.001)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: a cell, a model, a budget and a seed."""

    # cell
    model: str = "var"
    target: str = "mlp"
    lipschitz: float = 1.0
    channels: int = 1
    s_first: int = 2
    s_last: int = 8
    inputs: str = "uniform"
    target_seed: int = 0
    # model
    width: int = 32
    scales: int = 3
    interp: str = "bicubic"
    heads: int = 1
    depth: int = 1
    ffn_ratio: int = 4
    layernorm: bool = False
    pos: str = "sincos"
    flow_steps: int = 4
    flow_solver: str = "euler"
    # budget and optimisation
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-2
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    n_eval: int = 4096
    p: float = 2.0
    eps: tuple[float, ...] = DEFAULT_EPS
    seed: int = 0
    replicas: int = 1  # seeds trained together; the trial reports the best and the spread
    backend: str = "auto"
    device: str = "auto"

    def var_config(self) -> VARConfig:
        return VARConfig(
            channels=self.channels,
            s_first=self.s_first,
            s_last=self.s_last,
            scales=self.scales,
            width=self.width,
            heads=self.heads,
            depth=self.depth,
            ffn_ratio=self.ffn_ratio,
            interp=self.interp,
            layernorm=self.layernorm,
            pos=self.pos,
            backend=self.backend,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = list(self.eps)
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
        return cls(**d)

    def key(self) -> str:
        """Stable hash of the config: same config, same key (for dedup and resume)."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrialResult:
    """What a worker returns; the driver records it."""

    status: str  # "completed" or "failed"
    reason: str = ""
    err: float | None = None
    err_ucb: float | None = None
    rel_err: float | None = None
    n_params: int = 0
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
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def spread(self) -> float | None:
        """Range of err_ucb over the replicas (None with fewer than 2 finished)."""
        errs = [e for e in self.replica_err_ucb if e is not None]
        return max(errs) - min(errs) if len(errs) > 1 else None

    @classmethod
    def from_dict(cls, d: dict) -> TrialResult:
        return cls(**d)
