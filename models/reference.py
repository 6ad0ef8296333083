"""Reference errors that put a frontier in context.

- best affine map: least squares of f(X) on [X, 1] over the input
  distribution (closed form, on a fitting sample disjoint from evaluation);
- interpolate and scale: the best scalar multiple of the one-step bicubic
  up-interpolation.

A transformer that cannot beat the affine map has learned only a linear rule.
"""

from __future__ import annotations

import torch

from varbench.models.inputs import sample_inputs
from varbench.models.interp import interp_matrix
from varbench.models.metrics import DEFAULT_P, ErrorEstimate, error_estimate
from varbench.models.targets import Target


def reference_errors(
    target: Target,
    inputs: str = "uniform",
    n_fit: int = 4096,
    n_eval: int = 4096,
    p: float = DEFAULT_P,
    seed: int = 0,
) -> dict[str, ErrorEstimate]:
    gen = torch.Generator().manual_seed(seed + 7_777_777)
    c, s = target.channels, target.s_in
    x_fit = sample_inputs(inputs, max(n_fit, target.n_in + 2), c, s, gen)
    x_ev = sample_inputs(inputs, n_eval, c, s, gen)
    y_fit, y_ev = target(x_fit), target(x_ev)

    def design(x):
        flat = x.reshape(x.shape[0], -1).double()
        return torch.cat([flat, torch.ones(flat.shape[0], 1, dtype=flat.dtype)], dim=1)

    coef = torch.linalg.lstsq(design(x_fit), y_fit.reshape(y_fit.shape[0], -1).double()).solution
    affine = (design(x_ev) @ coef).float().reshape(y_ev.shape)

    u = interp_matrix("bicubic", s, target.s_out)

    def interp(x):
        return (x.reshape(x.shape[0], c, -1) @ u.T).reshape(x.shape[0], -1)

    phi_fit = interp(x_fit).double()
    yf = y_fit.reshape(y_fit.shape[0], -1).double()
    alpha = float((phi_fit * yf).sum() / (phi_fit * phi_fit).sum().clamp_min(1e-30))
    scaled = (alpha * interp(x_ev)).reshape(y_ev.shape)
    return {
        "affine": error_estimate(affine, y_ev, p),
        "interp_scale": error_estimate(scaled, y_ev, p),
    }
