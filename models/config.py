"""The models' settings as plain data: names, defaults and ``VARConfig``, without torch.

The CLI builds its choices and defaults from this module before any command
runs, so ``varbench --help`` answers without loading PyTorch. Each name list
is the one home of what a registry holds: ``targets.TARGETS``,
``interp.INTERPOLATIONS`` and ``families.FAMILIES`` register their
implementations under these names, and the other modules re-export the
tuples (tests/test_lazy_cli.py checks that the registries' keys equal them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from varbench.models.schedule import scale_schedule

# what each registry holds (adding one: the implementation there, its name here)
FAMILY_NAMES = ("var", "flowar")
TARGET_NAMES = ("upsample", "linear", "mlp", "fourier")
INTERPOLATION_NAMES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")

INPUTS = ("uniform", "smooth")  # X ~ U[0,1] (the theorem's domain) or smooth random fields
BACKENDS = ("reference", "sdpa", "bmm", "flex", "auto")  # the attention core's (models.attention)
INITS = ("normal", "var")
POS_CODES = ("sincos", "learned")

# FlowAR (models.flowar): solvers, sources z₀, velocity heads, and the inference defaults
SOLVERS = ("euler", "heun")
SOURCES = ("interp", "noise")
HEADS = ("mlp", "transformer")
FLOW_STEPS, FLOW_SOLVER = 4, "euler"  # inference defaults (trials read them from here)
FLOW_SOURCE, FLOW_SIGMA, FLOW_HEAD = "interp", 1.0, "mlp"

DEFAULT_P = 2.0  # the theorem's d_2 distance; 1 and inf are options (models.metrics)


@dataclass(frozen=True)
class VARConfig:
    channels: int = 1
    s_first: int = 2
    s_last: int = 8
    scales: int = 3
    width: int = 32
    heads: int = 1
    depth: int = 1
    ffn_ratio: int = 4
    interp: str = "bicubic"
    layernorm: bool = False
    pos: str = "sincos"  # "sincos" (parameter-free) or "learned" (counted in N)
    # "var": VAR's width-aware init; "normal": nanoGPT's N(0, 0.02) (see init_weights).
    # var: smaller N* at 7 of 10 points of two nightly cells, never larger (README)
    init: str = "var"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.pos not in POS_CODES:
            raise ValueError(f"unknown position code {self.pos!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; known: {list(INITS)}")
        scale_schedule(self.s_first, self.s_last, self.scales)  # validates

    @property
    def sides(self) -> list[int]:
        return scale_schedule(self.s_first, self.s_last, self.scales)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def n_tokens(self) -> int:
        return sum(s * s for s in self.sides)

    def to_dict(self) -> dict:
        return asdict(self)
