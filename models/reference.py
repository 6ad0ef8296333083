"""Reference errors that put a frontier in context.

- best affine map: least squares of f(X) on [X, 1] over the input
  distribution (closed form, on a fitting sample disjoint from evaluation);
- interpolate and scale: the best scalar multiple of the one-step bicubic
  up-interpolation.

A transformer that cannot beat the affine map has learned only a linear rule.

Each cell draws its own samples from its own seed (the driver passes one
derived from the sweep seed and the cell), and each reference carries a
two-sided 95% interval from its evaluation sample (``err_lo``, ``err_hi``).
The fit's own sampling error is of order (inputs + 1) / n_fit and is left out.
"""

from __future__ import annotations

import math

import torch

from varbench.models.inputs import sample_inputs
from varbench.models.interp import interp_matrix
from varbench.models.metrics import (
    DEFAULT_P,
    ErrorEstimate,
    estimate_from_samples,
    per_sample_power,
)
from varbench.models.targets import Target

EVAL_CHUNK = 2048


def reference_errors(
    target: Target,
    inputs: str = "uniform",
    n_fit: int = 4096,
    n_eval: int = 16384,
    p: float = DEFAULT_P,
    seed: int = 0,
) -> dict[str, ErrorEstimate]:
    """Both references' err_p on ``n_eval`` fresh inputs, with their intervals."""
    gen = torch.Generator().manual_seed(seed + 7_777_777)
    c, s = target.channels, target.s_in
    x_fit = sample_inputs(inputs, max(n_fit, target.n_in + 2), c, s, gen)
    y_fit = target(x_fit)

    def design(x):
        flat = x.reshape(x.shape[0], -1).double()
        return torch.cat([flat, torch.ones(flat.shape[0], 1, dtype=flat.dtype)], dim=1)

    coef = torch.linalg.lstsq(design(x_fit), y_fit.reshape(y_fit.shape[0], -1).double()).solution
    u = interp_matrix("bicubic", s, target.s_out)

    def interp(x):
        return (x.reshape(x.shape[0], c, -1) @ u.T).reshape(x.shape[0], -1)

    phi_fit = interp(x_fit).double()
    yf = y_fit.reshape(y_fit.shape[0], -1).double()
    alpha = float((phi_fit * yf).sum() / (phi_fit * phi_fit).sum().clamp_min(1e-30))
    # evaluate in chunks: only per-sample powers are kept
    powers: dict[str, list[torch.Tensor]] = {"affine": [], "interp_scale": []}
    sq, count = 0.0, 0
    for start in range(0, n_eval, EVAL_CHUNK):
        x_ev = sample_inputs(inputs, min(EVAL_CHUNK, n_eval - start), c, s, gen)
        y_ev = target(x_ev)
        affine = (design(x_ev) @ coef).float().reshape(y_ev.shape)
        scaled = (alpha * interp(x_ev)).reshape(y_ev.shape)
        powers["affine"].append(per_sample_power(affine, y_ev, p))
        powers["interp_scale"].append(per_sample_power(scaled, y_ev, p))
        sq += float(y_ev.double().pow(2).sum())
        count += y_ev.numel()
    rms = math.sqrt(sq / count)
    return {k: estimate_from_samples(torch.cat(v), rms, p) for k, v in powers.items()}
