"""Frontier-aware stopping: a trial that can no longer move the frontier stops as
`pruned` (not failed), is told to Optuna as PRUNED, and counts as not reached."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from varbench.orchestrator.studies import DIRECTIONS, Studies
from varbench.sweeps.frontier import FrontierPoint, TrialPoint, bar_for, frontier
from varbench.workers.config import TrialConfig
from varbench.workers.population import run_population
from varbench.workers.stopping import START, StopRule, improvement_bound
from varbench.workers.trial import run_trial


def test_rule_waits_for_a_quarter_of_the_budget_and_needs_a_bar():
    rule = StopRule(bar=0.01, steps=1000, eval_every=100)
    assert not any(rule.check(s, 1.0) for s in (100, 200))  # far above, but early
    assert rule.check(300, 1.0)  # past 25%: 100x the bar -> fires
    assert rule.fired_at == 300 and "bar 0.01" in rule.reason
    assert not rule.check(400, 1.0)  # fires once
    # at the end nothing is left to save: the trial is evaluated and keeps its error
    assert not StopRule(bar=0.01, steps=1000, eval_every=100).check(1000, 1.0)
    no_bar = StopRule(bar=None, steps=1000, eval_every=100)
    assert not any(no_bar.check(s, 1.0) for s in range(100, 1001, 100))
    assert START == 0.25


def test_rule_spares_what_a_measured_trial_could_still_gain():
    # at 25% a trial's error fell by up to 1.9x by the end: 2x the bar is spared
    assert improvement_bound(0.25) == 1.90 and improvement_bound(1.0) == 1.0
    assert improvement_bound(0.3) < improvement_bound(0.25)  # less budget left, less to gain
    spared = StopRule(bar=0.01, steps=1000, eval_every=100)
    assert not spared.check(250, 0.02)  # 2.0x <= 1.1 x 1.9
    assert spared.check(500, 0.02)  # half-way: 2.0x > 1.1 x 1.34
    near = StopRule(bar=0.01, steps=1000, eval_every=100)
    assert not any(near.check(100 * (i + 1), 0.0105) for i in range(10))  # within 1.1x to the end
    done = StopRule(bar=0.0, steps=1000, eval_every=100)  # smaller trials reached every ε
    assert done.check(250, 1e-9)


def test_rule_spares_every_trial_of_the_measured_curves_that_ended_at_its_bar():
    # the quick.yaml trials (pruning off, two sweep seeds) that came closest to being
    # stopped and still ended at their bar: monitor err every 50 of 400 steps, bar, final
    curves = [
        ((0.0944, 0.0703, 0.062, 0.0577, 0.0539, 0.0514, 0.0502, 0.05), 0.05, 0.04995),
        ((0.0946, 0.0704, 0.06, 0.0558, 0.0522, 0.0504, 0.0495, 0.0493), 0.05, 0.04926),
        ((0.0857, 0.0647, 0.0567, 0.0524, 0.0497, 0.0472, 0.0464, 0.0461), 0.05, 0.04573),
    ]
    for errs, bar, final in curves:
        rule = StopRule(bar=bar, steps=400, eval_every=50)
        assert final <= bar
        assert not any(rule.check(50 * (i + 1), e) for i, e in enumerate(errs))


def test_bar_is_the_largest_eps_no_smaller_trial_reached():
    trials = [TrialPoint(0, 100, 0.08, "completed"), TrialPoint(1, 500, 0.04, "completed")]
    points = frontier(trials, [0.1, 0.05, 0.03])
    assert bar_for(points, 50) == 0.1  # nothing this small finished: every ε is open
    assert bar_for(points, 200) == 0.05  # 0.1 is taken by N=100
    assert bar_for(points, 800) == 0.03  # 0.1 and 0.05 are taken
    done = frontier([TrialPoint(0, 100, 0.01, "completed")], [0.1, 0.05])
    assert bar_for(done, 200) == 0.0  # a smaller trial reached every ε: cannot matter
    assert bar_for(frontier([], [0.1]), 10) is None
    assert bar_for([FrontierPoint(0.1, False, None, None, None, None, 0)], 10) is None


def _quick(**kw) -> TrialConfig:
    return TrialConfig(width=8, steps=100, eval_every=10, n_eval=128, eps=(0.1, 1e-6),
                       **{"prune": True, **kw})


def test_trial_given_an_unreachable_bar_stops_early_as_pruned():
    res = run_trial(_quick(bar=1e-6))
    assert res.status == "pruned", res.reason
    assert res.steps_run == res.pruned_at == 30  # the first check from 25% of 100 steps
    assert res.err_ucb is None and not res.reached  # counts as reaching no ε
    assert res.monitor_err is not None and res.monitor_err > 1e-6
    assert "bar" in res.reason


def test_with_pruning_off_the_rule_is_only_observed():
    res = run_trial(_quick(bar=1e-6, prune=False))
    assert res.status == "completed" and res.steps_run == 100
    assert res.pruned_at == 30  # where it would have stopped: measured, not acted on


def test_population_prunes_per_replica():
    cfgs = [_quick(seed=0, bar=1e-6), _quick(seed=1, bar=None)]
    a, b = run_population(cfgs)
    assert (a.status, b.status) == ("pruned", "completed")
    assert a.steps_run == 30 and b.steps_run == 100 and a.population == 2


@pytest.mark.parametrize("status,state", [("pruned", TrialState.PRUNED),
                                          ("failed", TrialState.FAIL),
                                          ("completed", TrialState.COMPLETE)])
def test_optuna_hears_pruned_as_pruned(tmp_path, status, state):
    studies = Studies(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=studies.storage, directions=DIRECTIONS)
    trial = study.ask()
    studies.tell(study, trial.number, status, 100, 0.05 if status == "completed" else None)
    assert study.trials[0].state == state
