import math

import pytest
import torch

from varbench.models.population import PopulationVAR
from varbench.models.var import VAR, VARConfig
from varbench.workers.config import TrialConfig
from varbench.workers.population import batched, run_population
from varbench.workers.trial import run_trial


def test_population_forward_equals_each_model():
    cfg = VARConfig(width=8, scales=3, heads=2, depth=2, layernorm=True)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        m = VAR(cfg)
        for p in m.parameters():  # off the zero init so every path matters
            p.data.add_(0.1 * torch.randn_like(p))
        models.append(m)
    pop = PopulationVAR(models)
    x = torch.rand(3, 5, 1, 2, 2)
    out = pop(x)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x[i]), atol=1e-5, rtol=1e-5)


def test_population_training_matches_training_each_alone():
    # Same seeds and learning rates: tolerance 1e-5 relative on the final error and
    # loss (float rounding of batched vs single GEMMs); steps run must match exactly,
    # early stops included.
    cfgs = [TrialConfig(target="mlp", lipschitz=2.0, width=8, steps=80, eval_every=10,
                        n_eval=256, seed=s, lr=lr, eps=(0.13, 0.121))
            for s, lr in ((1, 1e-2), (2, 3e-3), (3, 2e-2))]
    assert batched(cfgs[0])
    together = run_population(cfgs)
    alone = [run_trial(c) for c in cfgs]
    for a, b in zip(together, alone):
        assert a.status == b.status == "completed"
        assert a.steps_run == b.steps_run
        assert math.isclose(a.err, b.err, rel_tol=1e-5)
        assert math.isclose(a.final_loss, b.final_loss, rel_tol=1e-4)
    assert len({r.steps_run for r in together}) > 1 or together[0].steps_run < 80


def test_replicas_report_best_and_spread():
    r = run_trial(TrialConfig(target="mlp", lipschitz=2.0, width=8, steps=30, eval_every=10,
                              n_eval=128, replicas=3, eps=(1e-6,)))
    assert len(r.replica_err_ucb) == 3 and r.err_ucb == min(r.replica_err_ucb)
    assert r.spread is not None and r.spread >= 0


def test_population_rejects_mixed_shapes():
    with pytest.raises(ValueError):
        run_population([TrialConfig(width=8), TrialConfig(width=16)])


def test_learning_curves_alone_and_in_a_population_agree():
    # every trial returns a compact curve: loss every k steps (k = steps / 100, here 1),
    # the monitor err_ucb every eval_every, and the lr; a population one per replica
    cfgs = [TrialConfig(target="mlp", lipschitz=2.0, width=8, steps=40, eval_every=10,
                        n_eval=128, seed=s, lr=lr, eps=(1e-6,))
            for s, lr in ((1, 1e-2), (2, 3e-3))]
    together = run_population(cfgs)
    alone = [run_trial(c) for c in cfgs]
    for a, b in zip(together, alone):
        (ca,), (cb,) = a.curves, b.curves
        assert [s for s, _ in ca["loss"]] == list(range(1, 41))
        assert [s for s, _ in ca["monitor_err_ucb"]] == [10, 20, 30, 40]
        assert [s for s, _ in ca["lr"]] == [s for s, _ in cb["lr"]]
        for (_, x), (_, y) in zip(ca["loss"], cb["loss"]):
            assert math.isclose(x, y, rel_tol=1e-4)
        assert ca["lr"] == cb["lr"]
    assert together[1].curves[0]["lr"][-1][1] < 3e-3  # cosine decay, replica's own lr
    r = run_trial(TrialConfig(target="mlp", lipschitz=2.0, width=4, scales=2, steps=201,
                              eval_every=100, n_eval=128, replicas=2, eps=(1e-6,)))
    assert len(r.curves) == 2  # one per replica; k = ceil(201 / 100) = 3, so 67 points
    assert all([s for s, _ in c["loss"]] == [*range(3, 202, 3)] for c in r.curves)
