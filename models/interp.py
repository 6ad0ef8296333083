"""Up-interpolation operators as cached dense matrices.

Every interpolation type is a fixed linear map from an s_in x s_in image to
an s_out x s_out image. We build its matrix once per (type, s_in, s_out) by
applying ``F.interpolate`` (or ``adaptive_avg_pool2d`` for ``area``) to the
basis images, then apply it as one matmul on flattened channels. A registry
maps names to builders: adding a type is one function and one name (here and
in ``models.config.INTERPOLATION_NAMES``, the torch-free list the CLI offers;
tests/test_lazy_cli.py checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

Interpolation = Callable[[torch.Tensor, int], torch.Tensor]


def _nearest(x: torch.Tensor, s_out: int) -> torch.Tensor:
    # PyTorch's legacy rule: source index floor(i·s_in/s_out), off-centre for 3 -> 5
    return F.interpolate(x, size=(s_out, s_out), mode="nearest")


def _nearest_exact(x: torch.Tensor, s_out: int) -> torch.Tensor:
    # pixel centres: source index floor((i + 0.5)·s_in/s_out), as PIL and scikit-image
    return F.interpolate(x, size=(s_out, s_out), mode="nearest-exact")


def _bilinear(x: torch.Tensor, s_out: int) -> torch.Tensor:
    return F.interpolate(x, size=(s_out, s_out), mode="bilinear", align_corners=False)


def _bicubic(x: torch.Tensor, s_out: int) -> torch.Tensor:
    # PyTorch's bicubic uses the Keys kernel with a = -0.75, as VAR does.
    return F.interpolate(x, size=(s_out, s_out), mode="bicubic", align_corners=False)


def _area(x: torch.Tensor, s_out: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, (s_out, s_out))


INTERPOLATIONS: dict[str, Interpolation] = {
    "nearest": _nearest,
    "nearest-exact": _nearest_exact,
    "bilinear": _bilinear,
    "bicubic": _bicubic,
    "area": _area,
}


@lru_cache(maxsize=256)
def _matrix_cpu64(kind: str, s_in: int, s_out: int) -> torch.Tensor:
    fn = INTERPOLATIONS[kind]
    n_in = s_in * s_in
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, s_in, s_in)
    cols = fn(basis, s_out).reshape(n_in, s_out * s_out)  # row j = image of basis j
    return cols.T.contiguous()  # (s_out^2, s_in^2)


def interp_matrix(
    kind: str,
    s_in: int,
    s_out: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The (s_out², s_in²) matrix M with vec(φ(x)) = M · vec(x), row-major."""
    if kind not in INTERPOLATIONS:
        raise KeyError(f"unknown interpolation {kind!r}; known: {sorted(INTERPOLATIONS)}")
    return _matrix_cpu64(kind, s_in, s_out).to(dtype=dtype, device=device)


def same_map(a: str, b: str, sides: list[int]) -> bool:
    """Whether two interpolation types give the same pyramid over ``sides``.

    E.g. ``area`` equals ``nearest`` at every integer ratio (2 -> 4, 4 -> 8, 2 -> 8).
    """
    return all(torch.equal(_matrix_cpu64(a, s, t), _matrix_cpu64(b, s, t))
               for s, t in zip(sides, sides[1:]))


def distinct_interps(kinds: list[str], schedules: list[list[int]]) -> list[str]:
    """``kinds`` without those that equal an earlier one on every schedule (order kept)."""
    out: list[str] = []
    for k in kinds:
        if not any(all(same_map(k, j, sides) for sides in schedules) for j in out):
            out.append(k)
    return out


def canonical_interp(kind: str, kinds: list[str], sides: list[int]) -> str:
    """The first of ``kinds`` that gives the same pyramid as ``kind`` over ``sides``."""
    return next((k for k in kinds if same_map(k, kind, sides)), kind)


def apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply an interpolation matrix to x of shape (..., c, s_in²) -> (..., c, s_out²)."""
    return x @ m.T


def upsample(kind: str, x: torch.Tensor, s_out: int) -> torch.Tensor:
    """Interpolate images x (B, c, s, s) to (B, c, s_out, s_out) via the cached matrix."""
    b, c, s, _ = x.shape
    m = interp_matrix(kind, s, s_out, x.dtype, x.device)
    return apply_matrix(m, x.reshape(b, c, s * s)).reshape(b, c, s_out, s_out)
