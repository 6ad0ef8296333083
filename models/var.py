"""The VAR transformer in theorem form (Chen et al. 2025), read top to bottom.

Data flow: image X -> pyramid of up-interpolations [X; φ1(X); φ2(φ1(X)); ...]
-> one token per pixel per scale -> linear embedding + level embedding +
2-D position code -> ``depth`` blocks of (block-causal attention, FFN) with
residuals -> linear readout of the last scale's tokens, plus a learnable
scalar gain times the interpolated last-scale input.

Defaults are the theorem's model: one single-head attention layer, FFN ratio
4, no LayerNorm (the residual stream stays linear). Heads, depth, FFN ratio,
LayerNorm and a learned position code are settings for "beyond the theorem"
comparisons.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from varbench.models import fused
from varbench.models.attention import attention, block_causal_mask, resolve_backend
from varbench.models.config import VARConfig
from varbench.models.interp import interp_matrix


def position_frequencies(s_last: int, dim: int) -> torch.Tensor:
    """Angular frequencies of the 2-D code: a geometric ladder below Nyquist of s_last.

    ω_j = π·s_last^(j/n), j = 0..n−1, n = dim/4: from half a cycle across the
    image (π) up to, but not reaching, the finest grid's Nyquist frequency π·s_last
    (on pixel centres a cosine at exactly Nyquist is zero everywhere). The
    former ladder π·2^j ran far above Nyquist for wide models (π·2^63 at d = 256),
    where about half the columns are constant on the grid.
    """
    n = max(dim // 4, 1)
    return math.pi * float(s_last) ** (torch.arange(n, dtype=torch.float64) / n)


def sincos_2d(sides: list[int], dim: int) -> torch.Tensor:
    """Parameter-free 2-D sinusoidal code, (sum s², dim), on normalised coordinates.

    Coordinates are pixel centres in [0, 1], so the same place in the image
    gets the same code at every scale.
    """
    freqs = position_frequencies(max(sides), dim)
    rows = []
    for s in sides:
        c = (torch.arange(s, dtype=torch.float64) + 0.5) / s
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        ay = yy.reshape(-1, 1) * freqs
        ax = xx.reshape(-1, 1) * freqs
        rows.append(torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1))
    code = torch.cat(rows, dim=0)
    if code.shape[1] < dim:
        code = F.pad(code, (0, dim - code.shape[1]))
    return code[:, :dim].float()


class Pyramid(nn.Module):
    """X -> tokens of [X; φ1(X); ...] (row-major per scale), and the last level."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.sides = cfg.sides
        for i, (a, b) in enumerate(zip(self.sides, self.sides[1:])):
            self.register_buffer(f"m{i}", interp_matrix(cfg.interp, a, b), persistent=False)
        ids = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.sides)])
        self.register_buffer("scale_ids", ids, persistent=False)

    def up(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """φ_i: flattened (B, c, s_i²) -> (B, c, s_(i+1)²) as one matmul."""
        return z @ getattr(self, f"m{i}").T

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Flattened levels, each (B, c, s_k²)."""
        b, c = x.shape[:2]
        cur = x.reshape(b, c, -1)
        out = [cur]
        for i in range(len(self.sides) - 1):
            cur = self.up(i, cur)
            out.append(cur)
        return out

    def ids(self, n_scales: int) -> torch.Tensor:
        """Scale ids of the first ``n_scales`` scales (a prefix of the sequence)."""
        return self.scale_ids[: sum(s * s for s in self.sides[:n_scales])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = self.levels(x)
        tokens = torch.cat(levels, dim=-1).transpose(1, 2)  # (B, T, c)
        return tokens, levels[-1]


def last_scale_tokens(sides: list[int]) -> dict[int, int]:
    """Token count of a sequence of the first n scales -> tokens of its last scale."""
    out, total = {}, 0
    for s in sides:
        total += s * s
        out[total] = s * s
    return out


class SelfAttention(nn.Module):
    """Query and value biases only, as VAR's own attention: a key bias adds the
    same amount to every score of a query, which softmax cancels (inert)."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.backend = cfg.backend
        # queries within a sequence's last scale see every key (block-causal); by length,
        # since FlowAR's inference passes a prefix of whole scales
        self.last_scale = last_scale_tokens(cfg.sides)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(d))
        self.v_bias = nn.Parameter(torch.zeros(d))
        self.proj = nn.Linear(d, d)

    def qkv_bias(self) -> torch.Tensor:
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(self, x, scale_ids, mask, start: int = 0):
        """Outputs for the tokens from ``start`` on (all of them by default)."""
        b, t, d = x.shape
        w, bias = self.qkv.weight, self.qkv_bias()
        if start:  # queries only where outputs are read; keys and values everywhere
            q = F.linear(x[:, start:], w[:d], bias[:d])
            k, v = F.linear(x, w[d:], bias[d:]).split(d, dim=2)
        else:
            q, k, v = F.linear(x, w, bias).split(d, dim=2)
        q, k, v = (z.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = attention(q, k, v, scale_ids, self.backend, mask,
                      full=t - start <= self.last_scale.get(t, 0))
        return self.proj(y.transpose(1, 2).reshape(b, t - start, d))


class FFN(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.width, cfg.ffn_ratio * cfg.width)
        self.out = nn.Linear(cfg.ffn_ratio * cfg.width, cfg.width)

    def forward(self, x):
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.width)) if cfg.layernorm else nn.Identity
        self.ln1, self.attn, self.ln2, self.ffn = norm(), SelfAttention(cfg), norm(), FFN(cfg)

    def forward(self, x, scale_ids, mask, start: int = 0):
        """The block's outputs for the tokens from ``start`` on."""
        x = x[:, start:] + self.attn(self.ln1(x), scale_ids, mask, start)
        return x + self.ffn(self.ln2(x))


class Backbone(nn.Module):
    """Embedding and blocks: tokens (B, T, c) -> hidden states (B, T, d).

    Shared by VAR and FlowAR (which reads per-scale conditioning from it).
    """

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.channels, cfg.width)
        self.level = nn.Embedding(cfg.scales, cfg.width)
        code = sincos_2d(cfg.sides, cfg.width)
        if cfg.pos == "learned":
            self.pos = nn.Parameter(code.clone())
        else:
            self.register_buffer("pos", code, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width) if cfg.layernorm else nn.Identity()

    def forward(self, tokens: torch.Tensor, scale_ids: torch.Tensor,
                read: int | None = None) -> torch.Tensor:
        """Hidden states for a token sequence, or for a prefix of whole scales.

        ``read``: how many trailing tokens the caller reads. The last block then
        computes outputs for those only (every block before it is needed whole,
        as keys and values), and only those are returned.
        """
        mask = None
        if resolve_backend(self.cfg.backend, tokens.device, self.cfg.head_dim,
                           tokens.shape[1]) != "flex":
            mask = block_causal_mask(scale_ids)
        h = self.embed(tokens) + self.level(scale_ids) + self.pos[: tokens.shape[1]]
        last = len(self.blocks) - 1
        start = tokens.shape[1] - read if read is not None else 0
        for i, block in enumerate(self.blocks):
            h = block(h, scale_ids, mask, start if i == last else 0)
        return self.ln_f(h)


class VAR(nn.Module):
    """Next-scale prediction as an image-to-image map X (B,c,s1,s1) -> (B,c,sK,sK)."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        self.pyramid = Pyramid(cfg)
        self.backbone = Backbone(cfg)
        self.readout = nn.Linear(cfg.width, cfg.channels)
        self.gain = nn.Parameter(torch.zeros(()))
        init_weights(self, cfg)
        # Start as the zero map: the readout learns from the first step and
        # the gain alone can represent the one-step interpolation target.
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, last = self.pyramid(x)
        s = self.cfg.s_last
        h_last = self.backbone(tokens, self.pyramid.scale_ids, read=s * s)  # only these are read
        y = self.readout(h_last).transpose(1, 2) + self.gain * last  # (B, c, sK²)
        return y.reshape(x.shape[0], self.cfg.channels, s, s)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE on fresh inputs: the square of err_2, no generalisation gap.

        The theorem's model on the CPU computes it by ``models.fused.VARLoss``
        (the same loss and gradients in fewer, larger operations)."""
        if fused.fuses(self.cfg, x, y, self.gain):
            return fused.var_loss(self, x, y)
        return F.mse_loss(self(x), y)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_params_effective(self) -> int:
        """N less the parameters that provably change nothing (``redundant_params``)."""
        return self.num_params() - redundant_params(self.cfg)

    def flops_per_sample(self) -> int:
        return var_flops(self.cfg)


def init_weights(model: nn.Module, cfg: VARConfig) -> None:
    """One place for initialisation (nanoGPT style), by ``cfg.init``.

    ``normal``: every linear and embedding weight N(0, 0.02), biases 0.
    ``var``: VAR's width-aware init, std √(1/(3·width)), and the attention output
    projection and the FFN output divided by √(2·depth).
    """
    std = 0.02 if cfg.init == "normal" else math.sqrt(1.0 / (3 * cfg.width))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
    if cfg.init == "var":
        for module in model.modules():
            if isinstance(module, Block):
                with torch.no_grad():
                    module.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
                    module.ffn.out.weight.div_(math.sqrt(2 * cfg.depth))


def backbone_params(cfg: VARConfig) -> int:
    """Closed-form parameter count of :class:`Backbone` (no model built)."""
    d, c, r = cfg.width, cfg.channels, cfg.ffn_ratio
    ln = 2 * d if cfg.layernorm else 0
    block = ln + (d * 3 * d + 2 * d) + (d * d + d) + ln + (d * r * d + r * d) + (r * d * d + d)
    pos = cfg.n_tokens * d if cfg.pos == "learned" else 0
    return (c * d + d) + cfg.scales * d + pos + cfg.depth * block + ln


def redundant_params(cfg: VARConfig) -> int:
    """Backbone parameters that other parameters absorb exactly (same set of maps without them).

    - the embedding bias: the level embedding adds its own vector to every token;
    - each value bias: softmax rows sum to 1, so it passes through as a constant
      that the output projection's bias absorbs;
    - without LayerNorm, each output-projection and FFN-output bias: a constant
      added to the (linear) residual stream, absorbed by the biases that read it
      (FFN input, next queries, readout); the key part is inert anyway;
    - with a learned position code, the level embedding (the code is per token).

    N counts every trainable parameter; "effective N" leaves these out.
    """
    d = cfg.width
    out = d + cfg.depth * d
    if not cfg.layernorm:
        out += cfg.depth * 2 * d
    if cfg.pos == "learned":
        out += cfg.scales * d
    return out


def var_params(cfg: VARConfig) -> int:
    """Closed-form N for :class:`VAR`: lets a sampler size a model without building it."""
    return backbone_params(cfg) + (cfg.width * cfg.channels + cfg.channels) + 1


def backbone_flops(cfg: VARConfig, n_scales: int | None = None, *, pyramid: bool = True,
                   read_scales: int | None = None) -> int:
    """Forward FLOPs (2 per multiply-add) per sample of the pyramid and backbone.

    ``n_scales`` counts a pass over a prefix of the sequence (FlowAR inference);
    ``pyramid=False`` leaves out the up-interpolations; ``read_scales`` counts
    the last block for the queries of the last so many scales only (the
    outputs that are read: ``Backbone.forward(read=...)``).
    """
    sides = cfg.sides[: n_scales or cfg.scales]
    d, c, r, t = cfg.width, cfg.channels, cfg.ffn_ratio, sum(s * s for s in sides)
    ups = sum(2 * c * a * a * b * b for a, b in zip(sides, sides[1:])) if pyramid else 0
    # attended (query, key) pairs under the block-causal mask, per query scale
    pairs = [s * s * sum(u * u for u in sides[: i + 1]) for i, s in enumerate(sides)]

    def layer(first: int) -> int:  # queries of scales first.., keys and values of all
        tq = sum(s * s for s in sides[first:])
        return (2 * t * d * 2 * d + 2 * tq * d * d + 2 * 2 * sum(pairs[first:]) * d
                + 2 * tq * d * d + 2 * 2 * tq * d * r * d)

    last = len(sides) - read_scales if read_scales else 0
    return ups + 2 * t * c * d + (cfg.depth - 1) * layer(0) + layer(last)


def var_flops(cfg: VARConfig) -> int:
    """Inference FLOPs per sample: the last block runs the last scale's queries only."""
    return backbone_flops(cfg, read_scales=1) + 2 * cfg.s_last**2 * cfg.width * cfg.channels
