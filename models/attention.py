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
BMM_PAD = 16  # bmm pads narrower heads to this: MKL's batched matmul is 2-3x slower at 4-8 columns


@dataclass(frozen=True)
class Measured:
    """fwd+bwd milliseconds of each backend at one shape (batch 64 unless noted)."""

    device: str  # "cpu" or "cuda"
    tokens: int
    head_dim: int
    ms: dict[str, float]
    source: str


# Every figure ``auto`` decides from; add rows from `make bench` / `make bench-gpu`.
MEASURED: tuple[Measured, ...] = (
    Measured("cpu", 84, 64, {"reference": 1.25, "sdpa": 0.89},
             "make bench, 2-core Xeon, torch 2.13 CPU, batch 16"),
    Measured("cpu", 340, 256, {"reference": 25.4, "sdpa": 28.6},
             "make bench, 2-core Xeon, torch 2.13 CPU, batch 16"),
    Measured("cuda", 85, 64, {"reference": 0.73, "sdpa": 0.42, "flex": 2.2},
             "issue 11, H200, torch 2.11+cu130"),
) + tuple(  # the model's own case: the last scale's queries (64, or 256 at s_last 16), unmasked
    Measured("cpu", t, d, {"sdpa": a, "bmm": b},
             "benchmarks/attention_cpu.py, 2-core AMD EPYC, torch 2.13 CPU, one thread")
    for t, d, a, b in ((84, 4, 2.47, 1.81), (84, 8, 2.89, 1.80), (84, 12, 2.41, 2.03),
                       (84, 16, 1.98, 1.86), (84, 32, 3.10, 2.85), (68, 8, 2.45, 1.90),
                       (68, 16, 1.69, 1.73), (120, 8, 3.80, 2.47), (120, 16, 2.50, 2.29),
                       (340, 8, 9.41, 8.20), (340, 32, 11.35, 11.67))
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


def _widen(x: torch.Tensor) -> torch.Tensor:
    """Zero columns up to ``BMM_PAD``: as a matmul's right operand they change nothing
    of the columns kept, and the batched matmul runs 2-3x faster (measured, CPU)."""
    d = x.shape[-1]
    return F.pad(x, (0, BMM_PAD - d)) if d < BMM_PAD else x


def _narrow_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a narrow ``b`` (N, K, d), through ``_widen``."""
    d = b.shape[-1]
    return torch.bmm(a, _widen(b))[..., :d] if d < BMM_PAD else torch.bmm(a, b)


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
        name = "sdpa"  # bmm's rows time unmasked queries; masked, it measured 0.9-1.3x sdpa
    if full and name != "flex":
        return _IMPLS[name](q, k, v, None, scale_ids)
    if mask is None and name != "flex":
        mask = block_causal_mask(scale_ids)
    if mask is not None and mask.shape[0] != q.shape[-2]:
        mask = mask[mask.shape[0] - q.shape[-2]:]
    return _IMPLS[name](q, k, v, mask, scale_ids)
