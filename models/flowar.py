"""FlowAR: the VAR backbone conditions a per-token flow, scale by scale.

Inference: ŷ₁ = X; for k = 2..K, run the backbone over scales 1..k (tokens
[X; φ(ŷ₁); ...; φ(ŷ_(k−1))]) to get conditioning h_k for the scale-k tokens,
integrate dz/dt = v_θ(z, t, h_k) from a source z₀ at t = 0 to t = 1 with
``flow_steps`` Euler (or Heun) steps, and set ŷ_k = z₁.

Two sources (``flow_source``), named in every result:

- ``interp``: z₀ = g·φ(ŷ_(k−1)) with a learnable gain g that starts at 0, so
  the model starts at the zero map, as VAR does; deterministic.
- ``noise``: FlowAR's own formulation, z₀ = σ·ε with ε ~ N(0, I). Evaluation
  draws ε from a fixed seed (``EVAL_NOISE_SEED``), one draw per input: the
  error is that of the sampler a user would run once, and the same inputs
  always give the same outputs. (A mean over draws would measure a different,
  smoother map, at a multiple of the inference FLOPs.)

Training (teacher forcing, one backbone pass): the scale-k tokens are
φ(y_(k−1)) with y_k the area-downsample of f(X) to s_k (y₁ = X, y_K = f(X));
rectified flow matching with z_t = (1−t)z₀ + t·y_k and target velocity
y_k − z₀, t ~ U(0,1) per sample and scale. With the noise source this is
FlowAR's loss (``models/flowloss.py`` there: x_τ = (1−τ)·data + τ·noise,
target noise − data, τ ~ U(0,1)) under τ = 1 − t, v_FlowAR = −v_here, and
σ = 1; the squared error is the same number (tests/test_flowar.py).

Embedding, mask, position code, interpolation matrices and blocks are the VAR
ones (``Backbone`` and ``Pyramid``); only the velocity head and the source
are new.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from varbench.models.attention import attention
from varbench.models.config import (  # names and inference defaults, torch-free
    FLOW_HEAD,
    FLOW_SIGMA,
    FLOW_SOLVER,
    FLOW_SOURCE,
    FLOW_STEPS,
    HEADS,
    SOLVERS,
    SOURCES,
)
from varbench.models.var import (
    Backbone,
    Pyramid,
    VARConfig,
    backbone_flops,
    init_weights,
    redundant_params,
)

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EVAL_NOISE_SEED = 0  # the noise source's fixed draws at inference


def time_features(t: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Sinusoidal features of t ∈ [0, 1], shape (..., n)."""
    freqs = math.pi * torch.arange(1, n // 2 + 1, device=t.device, dtype=t.dtype)
    a = t[..., None] * freqs
    return torch.cat([a.sin(), a.cos()], dim=-1)


class VelocityHead(nn.Module):
    """v_θ(z, t, h): per-token MLP on h + W_z·z + W_t·φ(t); zero output at init."""

    def __init__(self, cfg: VARConfig, hidden_ratio: int = 2, n_time: int = 16):
        super().__init__()
        d, c = cfg.width, cfg.channels
        self.n_time = n_time
        self.z_in = nn.Linear(c, d)
        self.t_in = nn.Linear(n_time, d)
        self.fc = nn.Linear(d, hidden_ratio * d)
        self.out = nn.Linear(hidden_ratio * d, c)

    def forward(self, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor,
                spans: list[slice] | None = None) -> torch.Tensor:
        """z (B, n, c), t (B,) or per token (B, n), h (B, n, d) -> velocity (B, n, c).

        Per token, so ``spans`` (the scales, for the transformer head) changes nothing."""
        te = self.t_in(time_features(t.reshape(z.shape[0], -1), self.n_time))
        u = h + self.z_in(z) + te
        return self.out(F.gelu(self.fc(u)))

    def redundant_params(self) -> int:
        return self.z_in.bias.numel()  # added to every token beside t_in's bias

    def time_flops(self) -> int:
        """The time embedding, once per distinct t."""
        return 2 * self.n_time * self.fc.in_features

    def flops_per_token(self, time: bool = True, n: int = 1) -> int:
        """Per token; ``time`` counts a time embedding per token too (as in training)."""
        d, c, hr = self.fc.in_features, self.out.out_features, self.fc.out_features
        return 2 * (c * d + d * hr + hr * c) + (self.time_flops() if time else 0)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """FlowAR's RMSNorm without a weight."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class TransformerVelocityHead(nn.Module):
    """FlowAR's velocity head (``SimpleTransformerAdaLN`` with one ``Block_v1``), in
    theorem form: one layer, one head.

    x = W_in·z; a DiT time embedder (sinusoid -> linear -> SiLU -> linear) gives
    t_e, a linear map of the condition gives c; per token, AdaLN reads SiLU(t_e + c)
    for shift, scale and gate of the attention (over the scale's own tokens) and of
    the MLP branch; the final layer is AdaLN-modulated and zero-initialised. Norms
    are RMSNorm without weights, as FlowAR's. FlowAR's rotary position code is
    left out: position reaches the head through h_k, which carries the backbone's
    code. The MLP is GELU d -> 2d -> d (FlowAR: SwiGLU).
    """

    def __init__(self, cfg: VARConfig, hidden_ratio: int = 2, n_time: int = 16):
        super().__init__()
        d, c = cfg.width, cfg.channels
        self.n_time, self.d, self.backend = n_time, d, cfg.backend
        self.z_in = nn.Linear(c, d)
        self.t_in = nn.Linear(n_time, d)
        self.t_mlp = nn.Linear(d, d)
        self.cond = nn.Linear(d, d)
        self.ada = nn.Linear(d, 6 * d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, hidden_ratio * d)
        self.fc_out = nn.Linear(hidden_ratio * d, d)
        self.ada_final = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, c)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Single-head attention among one scale's tokens (both ways)."""
        b, n, d = x.shape
        q, k, v = (z.unsqueeze(1) for z in self.qkv(x).split(d, dim=2))
        ids = torch.zeros(n, dtype=torch.long, device=x.device)  # one scale: all see all
        return self.proj(attention(q, k, v, ids, self.backend, full=True).squeeze(1))

    def forward(self, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor,
                spans: list[slice] | None = None) -> torch.Tensor:
        """z (B, n, c), t (B,) or (B, n), h (B, n, d); ``spans`` split the tokens into
        scales (training holds several; attention stays within each)."""
        te = self.t_mlp(F.silu(self.t_in(time_features(t.reshape(z.shape[0], -1), self.n_time))))
        mod = F.silu(te + self.cond(h))
        g1, g2, sc1, sc2, sh1, sh2 = self.ada(mod).chunk(6, dim=-1)
        x = self.z_in(z)
        a = rms_norm(x) * (1 + sc1) + sh1
        att = torch.cat([self._attend(a[:, sp]) for sp in spans], 1) if spans else self._attend(a)
        x = x + g1 * att
        x = x + g2 * self.fc_out(F.gelu(self.fc(rms_norm(x) * (1 + sc2) + sh2)))
        shift, scale = self.ada_final(mod).chunk(2, dim=-1)
        return self.out(rms_norm(x) * (1 + scale) + shift)

    def redundant_params(self) -> int:
        return 0  # nothing here folds away exactly (the norms see every bias)

    def time_flops(self) -> int:
        return 2 * self.n_time * self.d + 2 * self.d * self.d

    def flops_per_token(self, time: bool = True, n: int = 1) -> int:
        """Per token of a scale of ``n`` tokens (attention grows with n)."""
        d, c, hr = self.d, self.out.out_features, self.fc.out_features
        per = 2 * (c * d + d * d + d * 6 * d + d * 3 * d + 2 * n * d + d * d + 2 * d * hr
                   + d * 2 * d + d * c)
        return per + (self.time_flops() if time else 0)


def integrate(
    z0: torch.Tensor, h: torch.Tensor, velocity: Velocity, steps: int, solver: str = "euler"
) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t, h) from t = 0 to 1 in ``steps`` equal steps."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown flow solver {solver!r}; known: {list(SOLVERS)}")
    z, dt = z0, 1.0 / steps
    for i in range(steps):
        t = torch.full((z.shape[0],), i * dt, device=z.device, dtype=z.dtype)
        v = velocity(z, t, h)
        if solver == "heun":
            z_pred = z + dt * v
            v = 0.5 * (v + velocity(z_pred, t + dt, h))
        z = z + dt * v
    return z


class FlowAR(nn.Module):
    """Flow-based next-scale prediction, X (B,c,s1,s1) -> (B,c,sK,sK)."""

    def __init__(self, cfg: VARConfig, flow_steps: int = FLOW_STEPS,
                 flow_solver: str = FLOW_SOLVER, flow_source: str = FLOW_SOURCE,
                 flow_sigma: float = FLOW_SIGMA, flow_head: str = FLOW_HEAD):
        super().__init__()
        if cfg.scales < 2:
            raise ValueError("FlowAR needs at least 2 scales")
        if flow_solver not in SOLVERS:
            raise ValueError(f"unknown flow solver {flow_solver!r}")
        if flow_source not in SOURCES:
            raise ValueError(f"unknown flow source {flow_source!r}; known: {list(SOURCES)}")
        if flow_head not in HEADS:
            raise ValueError(f"unknown flow head {flow_head!r}; known: {list(HEADS)}")
        self.cfg, self.flow_steps, self.flow_solver = cfg, flow_steps, flow_solver
        self.flow_source, self.flow_sigma = flow_source, float(flow_sigma)
        self.pyramid = Pyramid(cfg)
        self.backbone = Backbone(cfg)
        self.head = VelocityHead(cfg) if flow_head == "mlp" else TransformerVelocityHead(cfg)
        # interp source: z₀ = g·φ(ŷ), g = 0 at init (the zero map, as VAR starts)
        self.source_gain = nn.Parameter(torch.zeros(())) if flow_source == "interp" else None
        init_weights(self, cfg)
        nn.init.zeros_(self.head.out.weight)
        nn.init.zeros_(self.head.out.bias)

    def source(self, up: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """z₀ from the interpolated previous scale ``up`` or from standard-normal ``noise``."""
        if self.source_gain is not None:
            return self.source_gain * up
        return self.flow_sigma * noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        sides = self.cfg.sides
        tokens = [x.reshape(b, c, -1)]  # per scale, (B, c, s²)
        y_hat = tokens[0]
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)  # fixed draws: a deterministic map
        for k in range(1, len(sides)):
            up = self.pyramid.up(k - 1, y_hat)
            tokens.append(up)
            noise = None
            if self.source_gain is None:
                noise = torch.randn(up.shape, generator=gen, dtype=up.dtype).to(up.device)
            z0 = self.source(up, noise)
            seq = torch.cat(tokens, dim=-1).transpose(1, 2)
            h = self.backbone(seq, self.pyramid.ids(k + 1), read=sides[k] ** 2)  # scale k only
            z1 = integrate(z0.transpose(1, 2), h, self.head, self.flow_steps, self.flow_solver)
            y_hat = z1.transpose(1, 2)
        return y_hat.reshape(b, c, sides[-1], sides[-1])

    def scale_targets(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """[y₁ = X, y₂, ..., y_K = f(X)], flattened (B, c, s_k²)."""
        b, c = x.shape[:2]
        sides = self.cfg.sides
        ys = [x.reshape(b, c, -1)]
        for s in sides[1:-1]:
            ys.append(F.adaptive_avg_pool2d(y, (s, s)).reshape(b, c, -1))
        ys.append(y.reshape(b, c, -1))
        return ys

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, *, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Rectified flow matching with teacher forcing, token-weighted over scales 2..K.

        ``t`` (B, K−1), one flow time per sample and scale, and ``noise`` (B, n, c)
        over the tokens of scales 2..K are drawn here unless given (tests give them).
        """
        ys = self.scale_targets(x, y)
        ups = [self.pyramid.up(k - 1, ys[k - 1]) for k in range(1, len(ys))]
        seq = torch.cat([ys[0], *ups], dim=-1).transpose(1, 2)
        n0 = ys[0].shape[-1]
        h = self.backbone(seq, self.pyramid.scale_ids, read=seq.shape[1] - n0)  # scales 2..K
        up = torch.cat(ups, dim=-1).transpose(1, 2)  # (B, n, c) over scales 2..K
        if noise is None and self.source_gain is None:
            noise = torch.randn_like(up)
        z0 = self.source(up, noise)
        y1 = torch.cat(ys[1:], dim=-1).transpose(1, 2)
        # one t per sample and scale, broadcast over that scale's tokens
        t_scale = torch.rand(x.shape[0], len(ups), device=x.device) if t is None else t
        counts = torch.tensor([z.shape[-1] for z in ups], device=x.device)
        t_tok = torch.repeat_interleave(t_scale, counts, dim=1)[..., None]  # (B, n, 1)
        zt = (1 - t_tok) * z0 + t_tok * y1
        spans, start = [], 0
        for z in ups:
            spans.append(slice(start, start + z.shape[-1]))
            start += z.shape[-1]
        v = self.head(zt, t_tok[..., 0], h, spans)
        return F.mse_loss(v, y1 - z0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_params_effective(self) -> int:
        """N less the backbone's redundant biases and the head's z_in bias (t_in's absorbs it)."""
        return self.num_params() - redundant_params(self.cfg) - self.head.redundant_params()

    def flops_per_sample(self) -> int:
        """Inference FLOPs: K−1 backbone passes over prefixes plus the flow steps.

        Each up-interpolation runs once (the prefix passes share them), and the
        time embedding runs once per sample and velocity evaluation (inference
        has one t per sample), not once per token.
        """
        cfg = self.cfg
        evals = self.flow_steps * (2 if self.flow_solver == "heun" else 1)
        backbone = sum(backbone_flops(cfg, k + 1, pyramid=False, read_scales=1)
                       for k in range(1, cfg.scales))
        pyramid = backbone_flops(cfg) - backbone_flops(cfg, pyramid=False)
        head = sum(s * s * self.head.flops_per_token(time=False, n=s * s) for s in cfg.sides[1:])
        head += (cfg.scales - 1) * self.head.time_flops()
        return pyramid + backbone + evals * head
