"""workers.optim.FusedAdamW: torch.optim.AdamW(fused=True)'s update, bit for bit."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from varbench.workers.config import TrialConfig
from varbench.workers.optim import FusedAdamW
from varbench.workers.training import build, set_lr


def _pair(wd: float):
    torch.manual_seed(0)
    a = build(TrialConfig(width=6, scales=2), torch.device("cpu"))
    b = build(TrialConfig(width=6, scales=2), torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    return a, b, FusedAdamW(a.parameters(), lr=0.03, weight_decay=wd), \
        torch.optim.AdamW(b.parameters(), lr=0.03, weight_decay=wd, fused=True)


def _grads(model, seed: int, skip: str | None = None):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.grad = None if name == skip else torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_the_same_update_as_torch_optim_bit_for_bit(wd):
    a, b, opt_a, opt_b = _pair(wd)
    for step in range(12):
        # a parameter without a gradient is skipped, as torch.optim skips it
        skip = "gain" if step < 3 else None
        _grads(a, step, skip)
        _grads(b, step, skip)
        lr = 0.03 * (1 - step / 12)
        set_lr(opt_a, lr)
        set_lr(opt_b, lr)
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad(set_to_none=True)
        opt_b.zero_grad(set_to_none=True)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
        assert pa.grad is None


def test_state_dicts_interchange_with_torch_optim():
    """A checkpoint of either, loaded into a fresh optimizer of the other kind (on a
    model with that checkpoint's weights), goes on exactly as the original."""
    a, b, opt_a, opt_b = _pair(0.0)
    for step in range(3):
        _grads(a, step)
        _grads(b, step)
        opt_a.step()
        opt_b.step()
    # copies, as a checkpoint's bytes are (a state dict holds the live tensors, in both)
    mine, theirs = copy.deepcopy(opt_a.state_dict()), copy.deepcopy(opt_b.state_dict())
    assert mine["param_groups"][0].keys() == theirs["param_groups"][0].keys()
    assert mine["state"].keys() == theirs["state"].keys()
    for i in mine["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(mine["state"][i][k], theirs["state"][i][k]), (i, k)
    # fresh optimizers with a history of their own, then each loads the other's state
    a2, b2, fresh_a, fresh_b = _pair(0.0)
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    for opt, model in ((fresh_a, a2), (fresh_b, b2)):
        _grads(model, 42)
        opt.step()  # moments and step count now differ from the checkpoint's
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    fresh_a.load_state_dict(theirs)
    fresh_b.load_state_dict(mine)
    for model in (a, b, a2, b2):
        _grads(model, 9)
    for opt in (opt_a, opt_b, fresh_a, fresh_b):
        opt.step()
    for pa, pb, pa2, pb2 in zip(a.parameters(), b.parameters(), a2.parameters(),
                                b2.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pa2) and torch.equal(pa, pb2)


def test_refuses_moments_of_another_shape():
    a, _, opt_a, _ = _pair(0.0)
    _grads(a, 0)
    opt_a.step()
    state = opt_a.state_dict()
    state["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        opt_a.load_state_dict(state)


def test_refuses_a_state_of_another_model():
    a, _, opt_a, _ = _pair(0.0)
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True)
    with pytest.raises(ValueError, match="does not match"):
        opt_a.load_state_dict(other.state_dict())


def test_a_cpu_trial_never_imports_torchdynamo():
    """The point of calling the kernel directly: a fresh worker's first CPU trial
    does not pay the 0.9 s import (the warm-up task no longer pays it either)."""
    code = ("import sys, torch; torch.set_num_threads(1)\n"
            "from varbench.workers.config import TrialConfig\n"
            "from varbench.workers.trial import run_trial\n"
            "r = run_trial(TrialConfig(width=4, scales=2, steps=20, eval_every=10, warmup=2,"
            " n_eval=64, batch_size=8, eps=(1e-3,)))\n"
            "assert r.status == 'completed', r.reason\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e9])  # clipping hard, some, or not at all
def test_clip_grad_norm_matches_torch_bit_for_bit(max_norm):
    from varbench.workers.optim import clip_grad_norm_

    a, b, _, _ = _pair(0.0)
    _grads(a, 7, skip="gain")  # a parameter without a gradient is left out of the norm
    _grads(b, 7, skip="gain")
    ours = clip_grad_norm_(list(a.parameters()), max_norm)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    assert torch.equal(ours, theirs)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    assert float(ours) > 0


def test_clip_grad_norm_without_gradients_is_zero_and_touches_nothing():
    from varbench.workers.optim import clip_grad_norm_

    a, _, _, _ = _pair(0.0)
    assert float(clip_grad_norm_(list(a.parameters()), 1.0)) == 0.0
    assert all(p.grad is None for p in a.parameters())


def test_clip_grad_norm_with_a_non_finite_gradient_matches_torch():
    from varbench.workers.optim import clip_grad_norm_

    a, b, _, _ = _pair(0.0)
    _grads(a, 3)
    _grads(b, 3)
    for m in (a, b):
        m.gain.grad.fill_(float("inf"))
    ours = clip_grad_norm_(list(a.parameters()), 1.0)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert torch.equal(ours, theirs) and torch.isinf(ours)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad.isnan(), q.grad.isnan())
        assert torch.equal(p.grad.nan_to_num(), q.grad.nan_to_num())


def test_train_step_with_fused_adamw_equals_the_torch_optim_path():
    """train_step's eager CPU branch (our clip, FusedAdamW) against torch's clip and
    torch.optim.AdamW(fused=True): the same parameters after each step, bit for bit."""
    from varbench.workers.training import train_step

    a, b, opt_a, opt_b = _pair(0.01)
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.rand(16, 1, 2, 2, generator=g)
        y = torch.rand(16, 1, 8, 8, generator=g)
        la = train_step(a, opt_a, x, y, grad_clip=0.05)  # small enough to clip
        lb = train_step(b, opt_b, x, y, grad_clip=0.05)
        opt_a.zero_grad(set_to_none=True)
        opt_b.zero_grad(set_to_none=True)
        assert torch.equal(la, lb)
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (step, name)
