"""models.fused: the theorem-form VAR's loss and gradients by hand equal autograd's."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from varbench.models import fused
from varbench.models.inputs import sample_inputs
from varbench.models.targets import make_target
from varbench.models.var import VAR, VARConfig
from varbench.workers.config import TrialConfig
from varbench.workers.training import train_one


def _model(cfg: VARConfig, seed: int = 0, dtype=torch.float32) -> VAR:
    """A model moved off its initialisation (the readout starts at zero, which would
    leave most gradients zero and the comparison weak)."""
    torch.manual_seed(seed)
    model = VAR(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def _batch(cfg: VARConfig, n: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = sample_inputs("uniform", n, cfg.channels, cfg.s_first, g).to(dtype)
    y = torch.randn(n, cfg.channels, cfg.s_last, cfg.s_last, generator=g).to(dtype)
    return x, y


CASES = [
    VARConfig(width=4, scales=2, interp="bilinear"),
    VARConfig(width=8, scales=3),
    VARConfig(width=16, scales=3, s_last=6),  # d a multiple of 16: the plain products
    VARConfig(width=23, scales=2),
    VARConfig(width=6, scales=3, channels=3, pos="learned", init="normal"),
    VARConfig(width=8, scales=1, s_first=4, s_last=4),  # one scale: every token a query
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"d{c.width}K{c.scales}c{c.channels}{c.pos}")
def test_loss_and_every_gradient_equal_autograd(cfg):
    model = _model(cfg)
    x, y = _batch(cfg)
    assert fused.fuses(cfg, x, y, model.gain)
    params = list(model.parameters())
    ref = F.mse_loss(model(x), y)  # the module's forward under autograd
    g_ref = torch.autograd.grad(ref, params)
    loss = model.training_loss(x, y)
    assert loss.grad_fn is not None and type(loss.grad_fn).__name__ == "VARLossBackward"
    g = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, g, g_ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_gradcheck_in_double():
    """Against finite differences, not only against autograd's own graph."""
    cfg = VARConfig(width=4, scales=2, s_first=2, s_last=4, interp="bicubic", pos="learned")
    model = _model(cfg, dtype=torch.float64)
    x, y = _batch(cfg, n=3, dtype=torch.float64)
    ups, ids, _ = fused.constants(model)
    named = dict(model.named_parameters())
    names = ("backbone.pos", *fused.PARAMS)
    assert set(names) == set(named)  # every parameter is checked

    def loss_of(pos, *params):
        return fused.VARLoss.apply(x, y, ups, ids, pos, *params)

    flat = tuple(named[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, flat, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("change", [
    {"depth": 2}, {"heads": 2}, {"layernorm": True}, {"backend": "sdpa"},
    {"backend": "reference"},
])
def test_other_models_keep_autograd(change):
    """Beyond the theorem's model, or an attention backend asked for by name: the
    module's own forward, under autograd."""
    cfg = dataclasses.replace(VARConfig(width=8, scales=2), **change)
    x, y = _batch(cfg)
    model = VAR(cfg)
    assert not fused.fuses(cfg, x, y, model.gain)
    loss = model.training_loss(x, y)
    assert type(loss.grad_fn).__name__ == "MseLossBackward0"


def test_not_without_gradients_nor_off_the_cpu_nor_under_vmap():
    cfg = VARConfig(width=8, scales=2)
    x, y = _batch(cfg)
    w = VAR(cfg).gain
    assert fused.fuses(cfg, x, y, w)
    with torch.no_grad():
        assert not fused.fuses(cfg, x, y, w)
    assert not fused.fuses(cfg, x.to("meta"), y, w)  # any device but the CPU (a GPU compiles)
    seen = []
    torch.func.vmap(lambda row: seen.append(fused.fuses(cfg, row, y, w)) or row)(x)
    assert seen == [False]


class _Loss(torch.nn.Module):
    """``training_loss`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, model: VAR):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return self.model.training_loss(x, y)


def test_not_when_the_parameters_are_transformed():
    """torch.func over the parameters (functional_call) with plain inputs: autograd's
    forward, whose gradient equals the one by hand."""
    cfg = VARConfig(width=4, scales=2)
    model = _model(cfg)
    x, y = _batch(cfg)
    wrapped = _Loss(model)
    params = {k: v.detach() for k, v in wrapped.named_parameters()}
    g = torch.func.grad(lambda p: torch.func.functional_call(wrapped, p, (x, y)))(params)
    g_ref = torch.autograd.grad(model.training_loss(x, y), list(model.parameters()))
    assert list(g) == [f"model.{n}" for n, _ in model.named_parameters()]
    for (name, a), b in zip(g.items(), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_not_for_inputs_that_need_a_gradient_nor_under_autocast():
    cfg = VARConfig(width=8, scales=2)
    model = _model(cfg)
    x, y = _batch(cfg)
    xg = x.clone().requires_grad_(True)
    assert not fused.fuses(cfg, xg, y, model.gain)
    (gx,) = torch.autograd.grad(model.training_loss(xg, y), xg)  # the input's gradient too
    assert gx.abs().sum() > 0
    assert not fused.fuses(cfg, x, y.clone().requires_grad_(True), model.gain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.fuses(cfg, x, y, model.gain)
        model.training_loss(x, y).float().backward()  # runs, under autograd


def test_a_second_derivative_raises_instead_of_coming_back_empty():
    cfg = VARConfig(width=4, scales=2)
    model = _model(cfg)
    x, y = _batch(cfg)
    (g,) = torch.autograd.grad(model.training_loss(x, y), [model.gain], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g, [model.gain])


def test_a_trial_trains_as_under_autograd(monkeypatch):
    """60 steps of a quick-sized trial, by hand and under autograd: the same loss curve
    to float rounding (the updates differ in their last bits)."""
    cfg = TrialConfig(width=6, scales=2, interp="bilinear", target="mlp", lipschitz=2.0,
                      steps=60, batch_size=32, lr=0.02, warmup=10, eval_every=30,
                      n_eval=256, eps=(1e-3,))
    by_hand = train_one(cfg)
    monkeypatch.setattr(fused, "fuses", lambda *args: False)
    plain = train_one(cfg)
    a = by_hand.curves[0]["loss"]
    b = plain.curves[0]["loss"]
    assert len(a) == len(b) > 5
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=2e-3, atol=1e-6)
    assert by_hand.err_ucb == pytest.approx(plain.err_ucb, rel=2e-3)


def test_the_target_is_unchanged():
    """The fused loss is the model's: a target's shape goes through as the module's."""
    cfg = VARConfig(width=4, scales=2)
    t = make_target("mlp", 1.0, 1, 2, 8, 0)
    x, _ = _batch(cfg)
    model = _model(cfg)
    torch.testing.assert_close(model.training_loss(x, t(x)), F.mse_loss(model(x), t(x)),
                               rtol=1e-5, atol=1e-7)


def test_not_inside_torch_compile():
    """A compiled step traces the module (Inductor fuses it), never VARLoss."""
    cfg = VARConfig(width=8, scales=2)
    x, _ = _batch(cfg)
    seen = []

    def probe(t):
        seen.append(fused.fuses(cfg, t, t, t))
        return t + 1

    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert seen == [False]
