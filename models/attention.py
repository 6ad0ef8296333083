"""The attention core: masked attention with selectable backends.

``reference`` is the definition (matmul, softmax, matmul). ``sdpa`` calls
PyTorch's fused ``scaled_dot_product_attention`` with a boolean mask. ``flex``
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
PREFERENCE = ("sdpa", "reference", "flex")  # among equals: no compilation first


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
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(q, k, v, mask, scale_ids):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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


_IMPLS: dict[str, Callable] = {"reference": _reference, "sdpa": _sdpa, "flex": _flex}


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
) -> torch.Tensor:
    """Block-causal attention over (..., heads, T, head_dim) tensors.

    ``mask`` may be passed precomputed (``block_causal_mask(scale_ids)``) to
    save rebuilding it every call. ``q`` may hold only the last Tq of the T
    tokens (outputs nobody reads are not computed); the mask's last Tq rows apply.
    """
    name = resolve_backend(backend, q.device, q.shape[-1], k.shape[-2])
    if mask is None and name != "flex":
        mask = block_causal_mask(scale_ids)
    if mask is not None and mask.shape[0] != q.shape[-2]:
        mask = mask[mask.shape[0] - q.shape[-2]:]
    return _IMPLS[name](q, k, v, mask, scale_ids)
