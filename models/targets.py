"""Target functions f with a certified Lipschitz bound, built from (L, seed).

Lipschitz constants are for the l2 (Frobenius) norm of the whole input and
output. Each family documents why its bound is exactly L. A registry maps
names to classes: adding a family is one class with ``@register("name")``,
and the name in ``models.config.TARGET_NAMES`` (the torch-free list the CLI
offers; tests/test_lazy_cli.py fails until the two agree).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from varbench.models.interp import interp_matrix

TARGETS: dict[str, type[Target]] = {}


def register(name: str):
    def deco(cls: type[Target]) -> type[Target]:
        cls.name = name
        TARGETS[name] = cls
        return cls

    return deco


def _spectral_norm(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m.double(), ord=2))


class Target:
    """f: [0,1]^(c x s_in x s_in) -> R^(c x s_out x s_out) with Lip(f) <= L."""

    name: ClassVar[str] = ""

    def __init__(self, lipschitz: float, channels: int, s_in: int, s_out: int, seed: int = 0):
        if not (lipschitz > 0 and math.isfinite(lipschitz)):
            raise ValueError(f"lipschitz must be a positive finite number, got {lipschitz}")
        self.lipschitz = float(lipschitz)
        self.channels, self.s_in, self.s_out, self.seed = channels, s_in, s_out, seed
        self.n_in = channels * s_in * s_in
        self.n_out = channels * s_out * s_out
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def certified_lipschitz(self) -> float:
        return self.lipschitz

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """f on flattened inputs (B, n_in) -> (B, n_out)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.flat(x.reshape(b, self.n_in))
        return y.reshape(b, self.channels, self.s_out, self.s_out)

    def to(self, device: torch.device | str) -> Target:
        for k, v in list(vars(self).items()):
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self._gen, dtype=torch.float64)


@register("upsample")
class Upsample(Target):
    """f = L·U/‖U‖₂, U the one-step bicubic up-interpolation s_in -> s_out.

    U acts on each channel alone, so ‖U‖₂ over the whole image equals the
    spectral norm of the per-channel matrix and Lip(f) = L exactly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        u = interp_matrix("bicubic", self.s_in, self.s_out, torch.float64)
        self.matrix = (self.lipschitz * u / _spectral_norm(u)).float()

    def flat(self, x):
        b = x.shape[0]
        xc = x.reshape(b, self.channels, -1)
        return (xc @ self.matrix.T).reshape(b, -1)


@register("linear")
class Linear(Target):
    """f = L·A/‖A‖₂ x with A a fixed Gaussian dense matrix (global mixing).

    A linear map's Lipschitz constant is its spectral norm, so Lip(f) = L.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a = self._randn(self.n_out, self.n_in)
        self.matrix = (self.lipschitz * a / _spectral_norm(a)).float()

    def flat(self, x):
        return x @ self.matrix.T


@register("mlp")
class MLP(Target):
    """f = W₂·tanh(W₁(x − ½) + b), hidden width 4·n_in (at least 32).

    ‖W₁‖₂ = √L·κ and ‖W₂‖₂ = √L/κ with κ = 2, so both frequency (W₁) and
    amplitude (W₂) grow with L. tanh' <= 1, so ‖J‖ <= ‖W₂‖‖W₁‖ = L: the
    certified bound is L (the true constant may be smaller).
    """

    kappa = 2.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = max(32, 4 * self.n_in)
        w1, w2 = self._randn(h, self.n_in), self._randn(self.n_out, h)
        root = math.sqrt(self.lipschitz)
        self.w1 = (root * self.kappa * w1 / _spectral_norm(w1)).float()
        self.w2 = (root / self.kappa * w2 / _spectral_norm(w2)).float()
        self.b = (0.5 * self._randn(h)).float()

    def flat(self, x):
        return torch.tanh((x - 0.5) @ self.w1.T + self.b) @ self.w2.T


@register("fourier")
class Fourier(Target):
    """f = A·sin(ω·W x + φ): a sum of 4·n_in sinusoids (at least 32) per output.

    ‖W‖₂ = 1, the frequency ω = π·L grows with L and ‖A‖₂ = 1/π stays fixed,
    so the function gets harder, not larger, as L grows. sin' <= 1, so
    ‖J‖ <= ‖A‖·ω·‖W‖ = L.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = max(32, 4 * self.n_in)
        w, a = self._randn(h, self.n_in), self._randn(self.n_out, h)
        self.omega = math.pi * self.lipschitz
        self.w = (w / _spectral_norm(w)).float()
        self.a = (a / (math.pi * _spectral_norm(a))).float()
        self.phase = (2 * math.pi * torch.rand(h, generator=self._gen, dtype=torch.float64)).float()

    def flat(self, x):
        return torch.sin(self.omega * (x @ self.w.T) + self.phase) @ self.a.T


def make_target(
    name: str, lipschitz: float, channels: int, s_in: int, s_out: int, seed: int = 0
) -> Target:
    if name not in TARGETS:
        raise KeyError(f"unknown target family {name!r}; known: {sorted(TARGETS)}")
    return TARGETS[name](lipschitz, channels, s_in, s_out, seed)


def _local_norms(target: Target, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """‖J_f(x_i)‖₂ for each row of x, exact, from one backward pass.

    Each input is repeated once per output; the sum of output k of copy k has
    row k of J as its gradient. Plain autograd rather than ``torch.func``:
    jacrev/vmap's first call in a process took 1.5-3 s (TorchDynamo's import
    and functorch's set-up), on the path of every sweep's set-up; this takes
    0.05 s from cold.
    """
    n, n_out = x.shape[0], target.n_out
    xr = x.repeat(n_out, 1)
    if not xr.requires_grad:
        xr.requires_grad_(True)
    y = target.flat(xr).view(n_out, n, n_out)
    (g,) = torch.autograd.grad(y.diagonal(dim1=0, dim2=2).sum(), xr, create_graph=create_graph)
    return torch.linalg.matrix_norm(g.view(n_out, n, -1).transpose(0, 1), ord=2)


def empirical_lipschitz(
    target: Target,
    n_points: int = 256,
    ascent_steps: int = 20,
    seed: int = 1,
) -> float:
    """A lower bound on Lip(f): max over inputs of ‖J_f(x)‖₂, refined by ascent.

    Draws ``n_points`` uniform inputs in the domain, computes each Jacobian's
    spectral norm (exact, ``_local_norms``), then runs projected gradient
    ascent on x from the best 16 points. Every value it returns is attained at
    a point of the domain, so it never exceeds the true constant.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, target.n_in, generator=gen)
    norms = _local_norms(target, x).detach()
    best = float(norms.max())
    top = x[norms.argsort(descending=True)[:16]].clone()
    step = 0.05
    for _ in range(ascent_steps):
        z = top.detach().requires_grad_(True)
        climb = _local_norms(target, z, create_graph=True)
        if not climb.requires_grad:
            break  # J does not depend on x (a linear target): nothing to climb
        (g,) = torch.autograd.grad(climb.sum(), z, materialize_grads=True)
        top = (top + step * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(0.0, 1.0)
        best = max(best, float(_local_norms(target, top).detach().max()))
    return best
