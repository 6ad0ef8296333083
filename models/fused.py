"""The theorem-form VAR's training loss with its backward written out (CPU).

The model of a quick sweep is tiny (width 4-32, one layer, one head), so a
training step under autograd is some 400 small operations, each paying
dispatch, a graph node and a fresh allocation. ``VARLoss`` computes the same
loss and the same parameter gradients in about 60 larger ones: every linear
map as one 2-D ``addmm`` over all tokens of the batch, queries, keys and
values from one matmul, the attention as ``models.attention.BmmAttention``
does it (probabilities kept, narrow products transposed), and one gradient
matrix for the query-key-value weight. Fewer, larger operations; the same
arithmetic, so it agrees with autograd to float rounding
(tests/test_fused.py).

It applies where the model is the theorem's (``fuses``): one block, one head,
no LayerNorm, on the CPU, attention ``auto`` or ``bmm``, with gradients on for
the parameters alone, no autocast, no ``torch.func`` transform and not inside
``torch.compile``; everything else
(a GPU, a compiled step, which Inductor fuses itself; an explicit attention
backend, which a user asks for to time it) keeps the module's own forward
under autograd. Only the last scale's queries
are read, and they see every key, so no mask is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from varbench.models.attention import _narrow_bmm

FUSED_BACKENDS = ("auto", "bmm")


def fuses(cfg, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``VARLoss`` computes this model's training loss for inputs ``x``,
    targets ``y`` and a parameter of the model (``weight``; see the module
    docstring). Only parameter gradients are written out, once: inputs or
    targets that need a gradient, autocast, or a ``torch.func`` transform of the
    inputs or the parameters keep the module under autograd."""
    return (cfg.depth == 1 and cfg.heads == 1 and not cfg.layernorm
            and cfg.backend in FUSED_BACKENDS and x.device.type == "cpu"
            and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # a compiled step fuses the module itself
            and not x.requires_grad and not y.requires_grad
            and not any(torch._C._functorch.is_functorch_wrapped_tensor(t)
                        for t in (x, y, weight)))


class VARLoss(torch.autograd.Function):
    """mean((VAR(x) − y)²) for a one-block, one-head VAR, gradients by hand.

    Inputs after ``x`` and ``y`` are the pyramid's interpolation matrices (a
    tuple), the tokens' scale ids and position code, then the parameters in
    the order of ``PARAMS``. Activations are kept as (B·T, d) rows so every
    linear map is one matmul.
    """

    @staticmethod
    def forward(ctx, x, y, ups, ids, pos, w_emb, b_emb, level, w_qkv, b_q, b_v, w_proj, b_proj,
                w_fc, b_fc, w_out, b_out, w_read, b_read, gain):
        n, c = x.shape[:2]
        d = w_qkv.shape[1]
        cur = x.reshape(n, c, -1)
        levels = [cur]
        for m in ups:  # φ_i as one matmul each (models.var.Pyramid)
            cur = cur @ m.T
            levels.append(cur)
        last = levels[-1]
        tokens = torch.cat(levels, -1).transpose(1, 2).reshape(-1, c)  # (B·T, c)
        t, s = ids.shape[0], last.shape[-1]
        start = t - s  # the last scale's tokens: the only queries whose outputs are read
        per_token = level[ids] + pos[:t] + b_emb  # (T, d), the same for every sample
        h0 = (tokens @ w_emb.T).view(n, t, d).add_(per_token)
        bias = torch.cat([b_q, torch.zeros_like(b_q), b_v])
        qkv = torch.addmm(bias, h0.view(-1, d), w_qkv.T).view(n, t, 3 * d)
        scale = 1.0 / math.sqrt(d)
        q = qkv[:, start:, :d] * scale  # scaled once here, not the (B, S, T) scores
        k, v = qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        o = _narrow_bmm(p, v).reshape(-1, d)  # (B·S, d)
        h1 = torch.addmm(b_proj, o, w_proj.T).view(n, s, d).add_(h0[:, start:]).view(-1, d)
        f = torch.addmm(b_fc, h1, w_fc.T)
        g = F.gelu(f)
        h2 = torch.addmm(b_out, g, w_out.T).add_(h1)
        pred = torch.addmm(b_read, h2, w_read.T).view(n, s, c).transpose(1, 2) + gain * last
        diff = pred - y.reshape(n, c, s)
        ctx.save_for_backward(tokens, last, h0, q, k, v, p, o, h1, f, g, h2, diff, ids,
                              w_qkv, w_proj, w_fc, w_out, w_read)
        ctx.dims = (n, c, t, s, d, scale, level.shape[0])
        return diff.square().mean()

    @staticmethod
    @once_differentiable  # no graph of the backward: a second derivative raises
    def backward(ctx, dloss):
        (tokens, last, h0, q, k, v, p, o, h1, f, g, h2, diff, ids,
         w_qkv, w_proj, w_fc, w_out, w_read) = ctx.saved_tensors
        n, c, t, s, d, scale, n_levels = ctx.dims
        start = t - s
        dpred = diff * (dloss * 2.0 / diff.numel())  # (B, c, S)
        d_gain = (dpred * last).sum()
        dr = dpred.transpose(1, 2).reshape(-1, c)  # (B·S, c)
        d_w_read, d_b_read = dr.T @ h2, dr.sum(0)
        dh2 = dr @ w_read  # (B·S, d)
        d_w_out, d_b_out = dh2.T @ g, dh2.sum(0)
        df = torch.ops.aten.gelu_backward(dh2 @ w_out, f)
        d_w_fc, d_b_fc = df.T @ h1, df.sum(0)
        dh1 = torch.addmm(dh2, df, w_fc)  # the residual's share and the FFN's
        d_w_proj, d_b_proj = dh1.T @ o, dh1.sum(0)
        do = (dh1 @ w_proj).view(n, s, d)
        # attention (as BmmAttention.backward): dS = P ∘ (dP − rowsum(dO ∘ O))
        dqkv = torch.empty(n, t, 3 * d, dtype=h0.dtype)
        dqkv[:, :start, :d] = 0  # tokens before the last scale ask no query
        dqkv[:, :, 2 * d:] = _narrow_bmm(p.transpose(1, 2), do)
        ds = torch.bmm(do, v.transpose(1, 2))
        ds = ds.sub_((do * o.view(n, s, d)).sum(-1, keepdim=True)).mul_(p)
        dqkv[:, start:, :d] = _narrow_bmm(ds, k).mul_(scale)
        dqkv[:, :, d:2 * d] = _narrow_bmm(ds.transpose(1, 2), q)  # q carries the scale
        dqkv = dqkv.view(-1, 3 * d)
        d_w_qkv, d_bias = dqkv.T @ h0.view(-1, d), dqkv.sum(0)
        dh0 = (dqkv @ w_qkv).view(n, t, d)
        dh0[:, start:] += dh1.view(n, s, d)
        d_w_emb = dh0.view(-1, d).T @ tokens
        d_tok = dh0.sum(0)  # (T, d): what each token's constant part receives
        d_level = torch.zeros(n_levels, d, dtype=h0.dtype).index_add_(0, ids, d_tok)
        d_pos = d_tok if ctx.needs_input_grad[4] else None
        return (None, None, None, None, d_pos, d_w_emb, d_tok.sum(0), d_level, d_w_qkv,
                d_bias[:d], d_bias[2 * d:], d_w_proj, d_b_proj, d_w_fc, d_b_fc, d_w_out,
                d_b_out, d_w_read, d_b_read, d_gain)


# the parameters VARLoss takes after the constants, in its order (``VAR.named_parameters``)
PARAMS = ("backbone.embed.weight", "backbone.embed.bias", "backbone.level.weight",
          "backbone.blocks.0.attn.qkv.weight", "backbone.blocks.0.attn.q_bias",
          "backbone.blocks.0.attn.v_bias", "backbone.blocks.0.attn.proj.weight",
          "backbone.blocks.0.attn.proj.bias", "backbone.blocks.0.ffn.fc.weight",
          "backbone.blocks.0.ffn.fc.bias", "backbone.blocks.0.ffn.out.weight",
          "backbone.blocks.0.ffn.out.bias", "readout.weight", "readout.bias", "gain")


def constants(model) -> tuple:
    """What VARLoss takes between ``y`` and the parameters: the pyramid's matrices,
    the scale ids and the position code (a parameter where it is learned)."""
    pyr = model.pyramid
    ups = tuple(getattr(pyr, f"m{i}") for i in range(len(pyr.sides) - 1))
    return ups, pyr.scale_ids, model.backbone.pos


def var_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``VARLoss`` on a ``models.var.VAR`` (where ``fuses`` says so)."""
    named = dict(model.named_parameters())
    return VARLoss.apply(x, y, *constants(model), *(named[n] for n in PARAMS))
