"""Pause and resume: a trial continued from its checkpoint ends exactly where the
uninterrupted run ends (the machinery multi-fidelity and convergence checks use)."""

from __future__ import annotations

import json

import pytest

from varbench.workers.config import TrialConfig
from varbench.workers.training import train_one


@pytest.mark.parametrize("model", ["var", "flowar"])
def test_paused_and_resumed_equals_uninterrupted(model):
    cfg = TrialConfig(model=model, width=8, steps=60, eval_every=20, n_eval=128, eps=(1e-9,),
                      seed=3)
    full = train_one(cfg)
    half = train_one(cfg, pause_at=25)
    assert half.status == "completed" and half.paused and half.steps_run == 25 and half.checkpoint
    # a rung judges the monitor error; the full evaluation is the end's alone
    assert half.err_ucb is None and half.monitor_err is not None
    done = train_one(cfg, resume=half.checkpoint)
    assert done.steps_run == 60 and done.checkpoint is None
    assert done.err_ucb == pytest.approx(full.err_ucb, rel=1e-6)
    assert done.final_loss == pytest.approx(full.final_loss, rel=1e-6)
    assert not done.paused and done.monitor_err < half.monitor_err  # it did train on


def test_checkpoints_stay_out_of_the_results():
    res = train_one(TrialConfig(width=8, steps=20, eval_every=10, n_eval=64, eps=(1e-9,)),
                    pause_at=10)
    assert res.checkpoint and "checkpoint" not in res.to_dict()
    json.dumps(res.to_dict())  # what the driver records stays plain JSON


def test_no_checkpoint_when_the_trial_stopped_for_good():
    early = train_one(TrialConfig(target="upsample", interp="bicubic", scales=2, width=8,
                                  steps=600, eval_every=100, n_eval=256, eps=(0.5,)),
                      pause_at=500)
    assert early.steps_run < 500 and early.checkpoint is None  # reached its smallest ε


def test_a_resumed_trial_keeps_where_the_stopping_rule_fired():
    cfg = TrialConfig(width=8, steps=100, eval_every=10, n_eval=64, eps=(0.1, 1e-6), bar=1e-6,
                      prune=False, seed=1)  # observed only: it fires at 30 and trains on
    full = train_one(cfg)
    resumed = train_one(cfg, resume=train_one(cfg, pause_at=50).checkpoint)
    assert full.pruned_at == resumed.pruned_at == 30
