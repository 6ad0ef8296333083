"""The error metric err_p and its one-sided 95% upper confidence bound.

err_p(g) = (E_X mean_entries |f(X) - g(X)|^p)^(1/p): the theorem's d_p
distance normalised per output entry, so ε does not depend on image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from varbench.models.config import DEFAULT_P  # torch-free, for TrialConfig

Z95 = 1.6448536269514722  # one-sided 95% normal quantile
Z975 = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True)
class ErrorEstimate:
    err: float
    err_ucb: float  # one-sided 95% upper bound: what "reaches ε" is judged on
    rel_err: float
    n: int
    err_lo: float = math.nan  # two-sided 95% interval of err (CLT, like err_ucb)
    err_hi: float = math.nan


def per_sample_power(pred: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """mean_entries |f - g|^p per sample (max |f - g| for p = inf)."""
    d = (target - pred).flatten(1).abs().double()
    if math.isinf(p):
        return d.max(dim=1).values
    return d.pow(p).mean(dim=1)


def estimate_from_samples(
    per_sample: torch.Tensor, rms_target: float, p: float
) -> ErrorEstimate:
    """err_p and its UCB from per-sample powers.

    For finite p the UCB is a CLT bound on the mean of the per-sample powers,
    mapped through t -> t^(1/p) (monotone). For p = inf the estimate is the
    max over the evaluation set, a bound from below of the true sup; it has no
    finite-sample upper bound, so err_ucb = err there.
    """
    n = per_sample.numel()
    if math.isinf(p):
        err = float(per_sample.max())
        return ErrorEstimate(err, err, err / max(rms_target, 1e-30), n, err, err)
    mean = float(per_sample.mean())
    sd = float(per_sample.std()) if n > 1 else 0.0
    se = sd / math.sqrt(n)
    err = mean ** (1.0 / p)
    ucb = max(mean + Z95 * se, 0.0) ** (1.0 / p)
    lo = max(mean - Z975 * se, 0.0) ** (1.0 / p)
    hi = max(mean + Z975 * se, 0.0) ** (1.0 / p)
    return ErrorEstimate(err, ucb, err / max(rms_target, 1e-30), n, lo, hi)


def error_estimate(pred: torch.Tensor, target: torch.Tensor, p: float = DEFAULT_P) -> ErrorEstimate:
    """err_p with its 95% UCB and relative error from predictions on an eval set."""
    rms = float(target.double().pow(2).mean().sqrt())
    return estimate_from_samples(per_sample_power(pred, target, p), rms, p)
