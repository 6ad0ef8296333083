"""The attention core: masked attention with selectable backends.

``reference`` is the definition (matmul, softmax, matmul). ``sdpa`` calls
PyTorch's fused ``scaled_dot_product_attention`` with a boolean mask. ``flex``
calls ``flex_attention`` with a block mask built from the scale ids: the fused,
block-sparse kernel GPU workers run. ``auto`` picks ``flex`` on CUDA and
``sdpa`` on CPU (measured fastest there, see benchmarks/).

PyTorch 2.13 has no flex backward on CPU, so ``flex`` on CPU is forward-only;
asking it for gradients there raises a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("reference", "sdpa", "flex", "auto")


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
    return fn(q, k, v, block_mask=flex_block_mask(scale_ids, k.shape[-2] - q.shape[-2]))


_COMPILED: list = []


def _compiled_flex():
    """flex_attention is only fused when compiled; compile once per process."""
    if not _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


_IMPLS: dict[str, Callable] = {"reference": _reference, "sdpa": _sdpa, "flex": _flex}


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``auto`` into a concrete backend for ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {list(BACKENDS)}")
    if backend != "auto":
        return backend
    return "flex" if torch.device(device).type == "cuda" else "sdpa"


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
    name = resolve_backend(backend, q.device)
    if mask is None and name != "flex":
        mask = block_causal_mask(scale_ids)
    if mask is not None and mask.shape[0] != q.shape[-2]:
        mask = mask[mask.shape[0] - q.shape[-2]:]
    return _IMPLS[name](q, k, v, mask, scale_ids)
