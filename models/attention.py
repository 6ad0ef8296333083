"""The attention core: masked attention with selectable backends.

``reference`` is the definition (matmul, softmax, matmul). ``sdpa`` calls
PyTorch's fused ``scaled_dot_product_attention`` with a boolean mask. ``bmm``
is the definition with a hand-written backward: batched matmuls, the
probabilities kept from the forward instead of recomputed, and narrow heads
padded for the matmul library (``BmmAttention``); on CPU at the small shapes
of quick sweeps it beats the fused kernel, which is tuned for wide heads. ``flex``
calls ``flex_attention`` with a block mask built from the scale ids: the
fused, block-sparse kernel. ``auto`` picks per device and shape from measured
figures, all in one table here (``MEASURED``, rule in ``choose_backend``).

flex needs a head dimension of at least 16 on CUDA: narrower heads are padded
with zeros (the softmax scale stays that of the true dimension), which gives
the same output. PyTorch 2.13 has no flex backward on CPU, so ``flex`` on CPU
is forward-only; asking it for gradients there raises a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from varbench.models.config import BACKENDS  # torch-free, for the CLI

FLEX_MIN_HEAD_DIM = 16  # flex's kernels refuse narrower heads on CUDA: pad to this
TIE = 1.10  # a backend within 10% of the fastest counts as equally fast
PREFERENCE = ("sdpa", "bmm", "reference", "flex")  # among equals: no compilation first
# MKL's batched matmul is 1.2-5x slower when the product has d columns, d not a multiple of
# this, than for the transposed product (benchmarks/attention_cpu.py, ``_narrow_bmm``)
BMM_ALIGN = 16


@dataclass(frozen=True)
class Measured:
    """fwd+bwd milliseconds of each backend at one shape (batch 64 unless noted)."""

    device: str  # "cpu" or "cuda"
    tokens: int
    head_dim: int
    ms: dict[str, float]
    source: str


# Every figure ``auto`` decides from; add rows from `make bench` / `make bench-gpu`.
# CPU, the quick shapes: every head dim 4-32, because sdpa's CPU kernel is up to 1.6x slower
# at head dims that are not multiples of 4 (68 tokens: 3.33 ms at 11, 2.11 at 12), so a row
# does not stand for its neighbours
CPU_SOURCE = ("benchmarks/attention_cpu.py, 2026-11-28, 2-core AMD EPYC, torch 2.13 CPU, "
              "one thread, batch 64, bmm with transposed narrow products")
MEASURED: tuple[Measured, ...] = (
    Measured("cpu", 84, 64, {"reference": 1.25, "sdpa": 0.89},
             "make bench, 2-core Xeon, torch 2.13 CPU, batch 16"),
    Measured("cpu", 340, 256, {"reference": 25.4, "sdpa": 28.6},
             "make bench, 2-core Xeon, torch 2.13 CPU, batch 16"),
    Measured("cuda", 85, 64, {"reference": 0.73, "sdpa": 0.42, "flex": 2.2},
             "issue 11, H200, torch 2.11+cu130"),
) + tuple(  # the model's own case: the last scale's queries (64, or 256 at s_last 16), unmasked
    Measured("cpu", t, d, {"sdpa": a, "bmm": b}, CPU_SOURCE) for t, d, a, b in (
    (68, 4, 2.10, 1.37), (68, 5, 2.57, 1.33), (68, 6, 2.54, 1.48), (68, 7, 2.85, 1.59),
    (68, 8, 2.43, 1.25), (68, 9, 3.13, 1.72), (68, 10, 3.00, 1.70), (68, 11, 3.33, 1.64),
    (68, 12, 2.11, 1.83), (68, 13, 2.46, 1.70), (68, 14, 2.50, 1.63), (68, 15, 2.83, 1.73),
    (68, 16, 1.65, 1.59), (68, 17, 1.99, 1.78), (68, 18, 2.04, 2.09), (68, 19, 2.33, 2.20),
    (68, 20, 2.09, 1.92), (68, 21, 2.37, 2.00), (68, 22, 2.40, 2.02), (68, 23, 2.71, 2.10),
    (68, 24, 2.16, 2.18), (68, 25, 2.52, 2.37), (68, 26, 2.59, 2.81), (68, 27, 2.92, 2.71),
    (68, 28, 2.66, 2.92), (68, 29, 3.20, 2.66), (68, 30, 3.08, 2.67), (68, 31, 3.41, 2.95),
    (68, 32, 2.98, 2.61), (68, 48, 3.76, 3.58), (68, 64, 4.79, 4.68), (84, 4, 2.52, 1.37),
    (84, 5, 3.07, 1.42), (84, 6, 2.98, 1.73), (84, 7, 3.45, 1.71), (84, 8, 2.88, 1.79),
    (84, 9, 3.71, 1.94), (84, 10, 3.73, 2.09), (84, 11, 3.92, 1.98), (84, 12, 2.40, 1.74),
    (84, 13, 2.82, 2.20), (84, 14, 2.93, 1.95), (84, 15, 3.33, 2.22), (84, 16, 1.97, 1.99),
    (84, 17, 2.32, 2.20), (84, 18, 2.36, 2.40), (84, 19, 2.75, 2.45), (84, 20, 2.41, 2.79),
    (84, 21, 2.84, 2.79), (84, 22, 2.90, 3.03), (84, 23, 3.30, 2.69), (84, 24, 2.58, 2.70),
    (84, 25, 2.97, 3.12), (84, 26, 3.02, 3.16), (84, 27, 3.43, 3.23), (84, 28, 3.31, 3.30),
    (84, 29, 3.82, 3.57), (84, 30, 3.92, 3.90), (84, 31, 4.45, 3.77), (84, 32, 3.38, 3.39),
    (340, 8, 36.70, 30.44), (340, 16, 22.82, 34.70), (340, 24, 32.23, 39.13),
    (340, 32, 36.71, 52.63), (340, 48, 52.22, 61.08), (340, 64, 65.25, 76.12),
    )) + tuple(  # from before the transposed narrow products (bmm only faster since)
    Measured("cpu", t, d, {"sdpa": a, "bmm": b},
             "benchmarks/attention_cpu.py, 2-core AMD EPYC, torch 2.13 CPU, one thread")
    for t, d, a, b in ((120, 8, 3.80, 2.47), (120, 16, 2.50, 2.29))
)


def choose_backend(device: str, head_dim: int, tokens: int,
                   table: tuple[Measured, ...] = MEASURED) -> str:
    """The backend ``auto`` runs: the fastest at the nearest measured shape.

    Nearest is in log(tokens) and log(head_dim) on the same device kind.
    Backends within ``TIE`` of the fastest count as equal and ``PREFERENCE``
    breaks the tie, so ``auto`` never runs a backend measured more than 10%
    slower than another, and pays flex's compilation only for a real gain. A
    device kind with no figures gets ``sdpa``, which runs everywhere.
    """
    near, dist = None, math.inf  # plain loops: torch.compile traces this without a break
    for m in table:
        if m.device != device:
            continue
        d = math.log(m.tokens / tokens) ** 2 + math.log(m.head_dim / head_dim) ** 2
        if d < dist:
            near, dist = m, d
    if near is None:
        return "sdpa"
    best = min(near.ms.values())
    for name in PREFERENCE:
        if name in near.ms and near.ms[name] <= best * TIE:
            return name
    raise AssertionError("unreachable: the fastest backend is within TIE of itself")


def block_causal_mask(scale_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j.

    VAR's block-causal rule: a query at scale a sees keys at scales <= a,
    both ways within a scale.
    """
    return scale_ids[None, :] <= scale_ids[:, None]


def _reference(q, k, v, mask, scale_ids):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(q, k, v, mask, scale_ids):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _narrow_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a narrow ``b`` (N, K, d), as ``(bᵀ aᵀ)ᵀ`` unless d is a multiple of
    ``BMM_ALIGN``: the same products and sums, but the batched matmul then writes
    Tq-wide rows instead of d-wide ones. One thread, N = 64, Tq = 64, Tk = 68, the
    four such products of a step: 607 → 241 µs at d = 4, 604 → 348 at d = 8,
    1,414 → 855 at d = 23; 514 → 553 at d = 16, which is why multiples keep the
    plain form (it replaces padding d to 16 columns, which left d = 17-31 slow).
    The result is a transposed view (``reshape`` copies it where needed)."""
    if b.shape[-1] % BMM_ALIGN == 0:
        return torch.bmm(a, b)
    return torch.bmm(b.mT, a.mT).mT


class BmmAttention(torch.autograd.Function):
    """softmax(q kᵀ/√d + mask) v over (N, T, d) tensors, with its backward by hand.

    The forward keeps the probabilities P (N·Tq·Tk floats: 1.4 MB at the quick
    shapes), so the backward recomputes no exponential, and it uses
    rowsum(dP ∘ P) = rowsum(dO ∘ O), a (N, Tq, d) product instead of one over
    the scores. The fused CPU kernel recomputes P and is tuned for wide heads.
    """

    generate_vmap_rule = True  # torch.func transforms (vmap, grad) run it as written

    @staticmethod
    def forward(q, k, v, mask, scale: float):
        s = torch.bmm(q * scale, k.transpose(1, 2))
        if mask is not None:
            s = s.masked_fill_(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        return _narrow_bmm(p, v), p

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, _, scale = inputs
        o, p = output
        ctx.mark_non_differentiable(p)
        ctx.set_materialize_grads(False)  # no zero gradient for P (1.4 MB a step)
        ctx.save_for_backward(q, k, v, p, o)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, do, _dp):
        if do is None:  # only P's (non-differentiable) output was used
            return None, None, None, None, None
        q, k, v, p, o = ctx.saved_tensors
        do = do.contiguous()
        dv = _narrow_bmm(p.transpose(1, 2), do)
        ds = torch.bmm(do, v.transpose(1, 2))  # dP, then dS = P ∘ (dP − rowsum(dO ∘ O))
        ds = ds.sub_((do * o).sum(-1, keepdim=True)).mul_(p)
        dq = _narrow_bmm(ds, k).mul_(ctx.scale)
        dk = _narrow_bmm(ds.transpose(1, 2), q).mul_(ctx.scale)
        return dq, dk, dv, None, None


def _bmm(q, k, v, mask, scale_ids):
    *lead, tq, d = q.shape
    n = math.prod(lead)
    o, _ = BmmAttention.apply(q.reshape(n, tq, d), k.reshape(n, -1, d), v.reshape(n, -1, d),
                              mask, 1.0 / math.sqrt(d))
    return o.reshape(*lead, tq, d)


_FLEX_MASKS: dict[tuple, object] = {}


def flex_block_mask(scale_ids: torch.Tensor, q_start: int = 0):
    """Build (once per scale layout, query offset and device) the flex BlockMask for
    VAR's mask; queries are the tokens from ``q_start`` on."""
    key = (tuple(scale_ids.tolist()), q_start, str(scale_ids.device))
    bm = _FLEX_MASKS.get(key)
    if bm is None:
        from torch.nn.attention.flex_attention import create_block_mask

        ids = scale_ids

        def mask_mod(b, h, q_idx, kv_idx):
            return ids[kv_idx] <= ids[q_idx + q_start]

        n = ids.shape[0]
        bm = create_block_mask(mask_mod, None, None, n - q_start, n, device=ids.device)
        _FLEX_MASKS[key] = bm
    return bm


def _flex(q, k, v, mask, scale_ids):
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad
    ):
        raise NotImplementedError(
            "attention backend 'flex' has no backward on CPU in this PyTorch; "
            "use 'sdpa' or 'reference' for CPU training"
        )
    if not torch.is_grad_enabled():  # flex refuses CPU tensors that merely require grad
        q, k, v = q.detach(), k.detach(), v.detach()
    fn = _compiled_flex() if q.device.type == "cuda" else flex_attention
    block_mask = flex_block_mask(scale_ids, k.shape[-2] - q.shape[-2])
    d = q.shape[-1]
    if d >= FLEX_MIN_HEAD_DIM:
        return fn(q, k, v, block_mask=block_mask)
    pad = (0, FLEX_MIN_HEAD_DIM - d)  # zero columns add nothing to q·k or to the output
    out = fn(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), block_mask=block_mask,
             scale=1.0 / math.sqrt(d))
    return out[..., :d]


_COMPILED: list = []


def _compiled_flex():
    """flex_attention is only fused when compiled; compile once per process.

    ``dynamic=None`` (torch's automatic dynamic shapes): the first change of a
    size (batch, width) recompiles once with that size symbolic, instead of
    once per width as ``dynamic=False`` did.
    """
    if not _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED.append(torch.compile(flex_attention, dynamic=None))
    return _COMPILED[0]


_IMPLS: dict[str, Callable] = {"reference": _reference, "sdpa": _sdpa, "bmm": _bmm,
                               "flex": _flex}


def resolve_backend(backend: str, device: torch.device | str, head_dim: int,
                    tokens: int) -> str:
    """Turn ``auto`` into a concrete backend for ``device`` and the attention's shape."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {list(BACKENDS)}")
    if backend != "auto":
        return backend
    return choose_backend(torch.device(device).type, head_dim, tokens)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale_ids: torch.Tensor,
    backend: str = "auto",
    mask: torch.Tensor | None = None,
    *,
    full: bool = False,
) -> torch.Tensor:
    """Block-causal attention over (..., heads, T, head_dim) tensors.

    ``mask`` may be passed precomputed (``block_causal_mask(scale_ids)``) to
    save rebuilding it every call. ``q`` may hold only the last Tq of the T
    tokens (outputs nobody reads are not computed); the mask's last Tq rows apply.
    ``full``: the caller knows every query sees every key (the last scale's
    queries, or one scale's tokens), so no mask is applied: the same result,
    and the kernels run unmasked (sdpa on CPU: 2.20 vs 2.29 ms and 2.50 vs 2.67 ms
    fwd+bwd at 68 tokens, heads 4 and 8, in one scratch measurement).
    """
    name = resolve_backend(backend, q.device, q.shape[-1], k.shape[-2])
    if backend == "auto" and name == "bmm" and not full:
        name = "sdpa"  # bmm's rows time unmasked queries (masked: no rows yet; 0.53-1.21x sdpa
        # at 68-84 tokens in the run the rows come from, benchmarks/attention_cpu.py)
    if full and name != "flex":
        return _IMPLS[name](q, k, v, None, scale_ids)
    if mask is None and name != "flex":
        mask = block_causal_mask(scale_ids)
    if mask is not None and mask.shape[0] != q.shape[-2]:
        mask = mask[mask.shape[0] - q.shape[-2]:]
    return _IMPLS[name](q, k, v, mask, scale_ids)
