"""R VAR models of one shape as one module with stacked parameters.

Every weight gets a leading replica dimension; linear layers are batched
matmuls (``baddbmm``) and attention folds the replicas into its batch, so one
fused kernel call serves all R models. The forward is VAR's, read the same way
(pyramid, embedding, blocks, readout); replicas never mix, so the gradient of
the summed per-replica losses is each replica's own gradient.

Built from R ordinary ``VAR`` instances (``from_models``), so a population
starts exactly where R separate trainings would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from varbench.models.attention import attention, block_causal_mask, resolve_backend
from varbench.models.var import VAR, VARConfig, last_scale_tokens


def _stack(tensors: list[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach().clone() for t in tensors]))


# Above this many multiply-adds per replica, R separate GEMMs beat one batched
# GEMM on CPU (measured: 1.6x at 5376x128x512); below it, one call saves the
# per-call overhead that dominates tiny models.
LOOP_MACS = 1 << 21


class PopLinear(nn.Module):
    """R independent linear layers: x (R, M, in) -> (R, M, out).

    A layer built without a bias (the attention's qkv) takes its bias, (R, out),
    as an argument instead.
    """

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = _stack([lin.weight.T for lin in layers])  # (R, in, out)
        self.bias = _stack([lin.bias for lin in layers]) if layers[0].bias is not None else None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        _, m, k = x.shape
        bias = self.bias if bias is None else bias  # (R, out)
        if x.device.type == "cpu" and m * k * self.weight.shape[-1] > LOOP_MACS:
            # unbind, not x[i]: its backward stacks once instead of R zero-filled copies
            return torch.stack([torch.addmm(b, xi, w) for b, xi, w in
                                zip(bias.unbind(0), x.unbind(0), self.weight.unbind(0))])
        return torch.baddbmm(bias.unsqueeze(1), x, self.weight)

    def columns(self, x: torch.Tensor, cols: slice, bias: torch.Tensor) -> torch.Tensor:
        """Only some outputs: x (R, M, in) -> (R, M, len(cols)), with their bias (R, len(cols))."""
        return torch.baddbmm(bias.unsqueeze(1), x, self.weight[:, :, cols])


class PopLayerNorm(nn.Module):
    def __init__(self, norms: list[nn.Module]):
        super().__init__()
        self.on = isinstance(norms[0], nn.LayerNorm)
        if self.on:
            self.weight = _stack([n.weight for n in norms])
            self.bias = _stack([n.bias for n in norms])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (R, M, d)
        if not self.on:
            return x
        y = F.layer_norm(x, x.shape[-1:])
        return y * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)


class PopBlock(nn.Module):
    def __init__(self, blocks, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        self.last_scale = last_scale_tokens(cfg.sides)  # as SelfAttention: unmasked within it
        self.ln1 = PopLayerNorm([b.ln1 for b in blocks])
        self.qkv = PopLinear([b.attn.qkv for b in blocks])  # no bias: q and v biases below
        self.q_bias = _stack([b.attn.q_bias for b in blocks])  # (R, d)
        self.v_bias = _stack([b.attn.v_bias for b in blocks])
        self.proj = PopLinear([b.attn.proj for b in blocks])
        self.ln2 = PopLayerNorm([b.ln2 for b in blocks])
        self.fc = PopLinear([b.ffn.fc for b in blocks])
        self.out = PopLinear([b.ffn.out for b in blocks])

    def forward(self, h, batch: int, scale_ids, mask, start: int = 0):  # h (R, B*T, d)
        """VAR's ``Block``: outputs for the tokens from ``start`` on, (R, B*(T−start), d)."""
        r, _, d = h.shape
        t, heads = scale_ids.shape[0], self.cfg.heads
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias], dim=1)
        x = self.ln1(h)
        if start:  # queries only where outputs are read
            tail = lambda z: z.view(r, batch, t, -1)[:, :, start:].reshape(r, -1, z.shape[-1])  # noqa: E731
            q = self.qkv.columns(tail(x), slice(0, d), qkv_bias[:, :d])
            k, v = self.qkv.columns(x, slice(d, 3 * d), qkv_bias[:, d:]).split(d, dim=2)
            h = tail(h)
        else:
            q, k, v = self.qkv(x, qkv_bias).split(d, dim=2)
        q, k, v = (z.reshape(r * batch, -1, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        y = attention(q, k, v, scale_ids, self.cfg.backend, mask,  # replicas folded into batch
                      full=t - start <= self.last_scale.get(t, 0))
        h = h + self.proj(y.transpose(1, 2).reshape(r, batch * (t - start), d))
        return h + self.out(F.gelu(self.fc(self.ln2(h))))


class PopulationVAR(nn.Module):
    """R VARs at once: x (R, B, c, s1, s1) -> (R, B, c, sK, sK)."""

    def __init__(self, models: list[VAR]):
        super().__init__()
        cfg = models[0].cfg
        self.cfg, self.r = cfg, len(models)
        self.pyramid = models[0].pyramid  # fixed interpolation matrices, shared
        bbs = [m.backbone for m in models]
        self.embed = PopLinear([b.embed for b in bbs])
        self.level = _stack([b.level.weight for b in bbs])  # (R, K, d)
        if cfg.pos == "learned":
            self.pos = _stack([b.pos for b in bbs])
        else:
            self.register_buffer("pos", bbs[0].pos.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(PopBlock([b.blocks[i] for b in bbs], cfg)
                                    for i in range(cfg.depth))
        self.ln_f = PopLayerNorm([b.ln_f for b in bbs])
        self.readout = PopLinear([m.readout for m in models])
        self.gain = _stack([m.gain for m in models])  # (R,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, b, c = x.shape[:3]
        tokens, last = self.pyramid(x.reshape(r * b, *x.shape[2:]))  # (R*B, T, c), (R*B, c, sK²)
        ids = self.pyramid.scale_ids
        t = ids.shape[0]
        flex = resolve_backend(self.cfg.backend, x.device, self.cfg.head_dim, t) == "flex"
        mask = None if flex else block_causal_mask(ids)
        h = self.embed(tokens.reshape(r, b * t, c)).view(r, b, t, -1)
        h = (h + (self.level[:, ids] + self.pos).unsqueeze(1)).reshape(r, b * t, -1)
        s = self.cfg.s_last
        for i, block in enumerate(self.blocks):  # the last block: last-scale queries only
            h = block(h, b, ids, mask, t - s * s if i == len(self.blocks) - 1 else 0)
        h_last = self.ln_f(h)  # (R, B*sK², d)
        y = self.readout(h_last).view(r, b, s * s, c).transpose(2, 3)
        y = y + self.gain.view(r, 1, 1, 1) * last.view(r, b, c, s * s)
        return y.reshape(r, b, c, s, s)

