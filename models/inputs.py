"""Input distributions on the theorem's compact domain [0, 1]^(c x s x s)."""

from __future__ import annotations

import math

import torch

from varbench.models.config import INPUTS  # torch-free, for the CLI


def sample_inputs(
    kind: str, n: int, channels: int, side: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw n inputs (n, c, s, s).

    ``uniform``: i.i.d. U[0,1] entries (the default, the theorem's domain).
    ``smooth``: low-pass Gaussian random fields (Gaussian spectrum with a
    length scale of a quarter of the image), mean 0.5, clipped to [0, 1], like
    natural images.
    """
    if kind == "uniform":
        return torch.rand(n, channels, side, side, generator=generator)
    if kind == "smooth":
        noise = torch.randn(n, channels, side, side, generator=generator)
        f = torch.fft.fftfreq(side)
        k2 = f[:, None] ** 2 + f[None, :] ** 2
        length = max(side / 4.0, 1.0)
        filt = torch.exp(-2.0 * (math.pi * length) ** 2 * k2)
        field = torch.fft.ifft2(torch.fft.fft2(noise) * filt).real
        std = field.flatten(1).std(dim=1).clamp_min(1e-8).view(n, 1, 1, 1)
        return (0.5 + 0.2 * field / std).clamp(0.0, 1.0)
    raise ValueError(f"unknown input distribution {kind!r}; known: {list(INPUTS)}")
