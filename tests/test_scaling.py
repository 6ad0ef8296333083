import numpy as np

from varbench.sweeps.frontier import TrialPoint
from varbench.sweeps.scaling import CellTrials, fit_scaling

EPS = [0.3, 0.1, 0.05, 0.03, 0.01]
BETA, GAMMA, C = 1.5, 2.0, 10.0


def synthetic(seed: int, noise: float = 0.15, n_trials: int = 60) -> list[CellTrials]:
    """Trials whose err makes N*(ε, L) = C·L^β·ε^(−γ) up to log-normal noise."""
    rng = np.random.default_rng(seed)
    cells = []
    for L in (1.0, 2.0, 4.0, 8.0):
        sizes = np.exp(rng.uniform(np.log(10), np.log(1e7), n_trials)).astype(int)
        err = (sizes / (C * L**BETA)) ** (-1 / GAMMA) * np.exp(rng.normal(0, noise, n_trials))
        cells.append(CellTrials(L, tuple(TrialPoint(i, int(n), float(e), "completed")
                                         for i, (n, e) in enumerate(zip(sizes, err)))))
    return cells


def test_fit_recovers_known_exponents_within_interval():
    fit = fit_scaling("synthetic", synthetic(0), EPS, n_boot=200)
    assert fit.ok and fit.n_points >= 12
    assert fit.beta_ci[0] <= BETA <= fit.beta_ci[1], (fit.beta, fit.beta_ci)
    assert fit.gamma_ci[0] <= GAMMA <= fit.gamma_ci[1], (fit.gamma, fit.gamma_ci)
    assert abs(fit.beta - BETA) < 0.3 and abs(fit.gamma - GAMMA) < 0.3


def test_bootstrap_interval_covers_truth_in_most_draws():
    hits_b = hits_g = 0
    draws = 12
    for seed in range(draws):
        fit = fit_scaling("synthetic", synthetic(100 + seed), EPS, n_boot=100, seed=seed)
        hits_b += fit.beta_ci[0] <= BETA <= fit.beta_ci[1]
        hits_g += fit.gamma_ci[0] <= GAMMA <= fit.gamma_ci[1]
    assert hits_b >= 0.7 * draws and hits_g >= 0.7 * draws, (hits_b, hits_g)


def test_too_few_points_say_so():
    cells = [CellTrials(1.0, (TrialPoint(0, 100, 0.05, "completed"),))]
    fit = fit_scaling("tiny", cells, EPS)
    assert not fit.ok and fit.beta is None and "too few" in fit.note


def test_single_L_fits_gamma_only():
    cells = synthetic(3)[:1]
    fit = fit_scaling("one-L", cells, EPS, n_boot=100)
    assert fit.beta is None and fit.gamma is not None and "β not identifiable" in fit.note


def test_one_trial_deciding_every_point_is_not_a_fit():
    cells = [CellTrials(L, (TrialPoint(0, 250, 0.01, "completed"),)) for L in (1.0, 2.0)]
    fit = fit_scaling("flat", cells, EPS)
    assert fit.n_points == 10 and not fit.ok and "same N*" in fit.note


def test_two_values_of_L_or_eps_are_flagged():
    cells = synthetic(5)[:2]  # L = 1 and 2
    fit = fit_scaling("two-L", cells, EPS, n_boot=50)
    assert "β from only two values of L" in fit.note and "γ from only two" not in fit.note
    fit = fit_scaling("two-eps", synthetic(5), [0.1, 0.03], n_boot=50)
    assert "γ from only two values of ε" in fit.note and "β from only two" not in fit.note
