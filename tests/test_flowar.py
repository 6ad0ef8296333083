import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from varbench.models.attention import block_causal_mask
from varbench.models.flowar import FlowAR, integrate
from varbench.models.interp import upsample
from varbench.models.var import VARConfig, backbone_flops, backbone_params
from varbench.workers.config import TrialConfig
from varbench.workers.trial import run_trial

CFG = VARConfig(width=16, scales=3, s_first=2, s_last=8, interp="bilinear")


def test_starts_at_the_zero_map_and_zero_velocity_with_unit_gain_gives_the_chain():
    model = FlowAR(CFG, flow_steps=3)  # the head's output layer and the source gain start at 0
    x = torch.rand(4, 1, 2, 2)
    assert torch.equal(model(x), torch.zeros(4, 1, 8, 8))  # like VAR, not the input's chain
    with torch.no_grad():
        model.source_gain.fill_(1.0)
    want = upsample("bilinear", upsample("bilinear", x, 4), 8)
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=1e-5)


def test_noise_source_reproduces_flowar_loss_on_a_hand_computed_example():
    """FlowAR's SILoss (linear path): x_τ = (1−τ)·data + τ·noise, target noise − data.

    One sample, K = 2 sides 1 -> 2 (y₂ = f(X), four tokens), τ = 0.25 (t = 1 − τ
    here), and a velocity head that returns −z (FlowAR's model then returns
    +x_τ: v_FlowAR(x, τ) = −v_here(x, 1 − τ)). By hand, per token:
    x_τ = 0.75·y + 0.25·n, FlowAR's squared error (x_τ − (n − y))² = (1.75y − 0.75n)².
    """
    cfg = VARConfig(width=4, scales=2, s_first=1, s_last=2, interp="nearest")
    model = FlowAR(cfg, flow_source="noise", flow_sigma=1.0)
    assert model.source_gain is None
    model.head.forward = lambda z, t, h, spans=None: -z
    x = torch.tensor([[[[0.3]]]])
    y = torch.tensor([[[[1.0, 2.0], [-1.0, 0.5]]]])
    n = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1)
    want = sum((1.75 * a - 0.75 * b) ** 2 for a, b in [(1.0, 0.5), (2.0, -1.0), (-1.0, 2.0),
                                                       (0.5, 0.0)]) / 4
    assert want == pytest.approx((1.890625 + 18.0625 + 10.5625 + 0.765625) / 4)  # 7.8203125
    got = model.training_loss(x, y, t=torch.tensor([[0.75]]), noise=n)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # σ scales the source: z₀ = σ·ε
    model2 = FlowAR(cfg, flow_source="noise", flow_sigma=2.0)
    model2.head.forward = lambda z, t, h, spans=None: -z
    want2 = sum((1.75 * a - 0.75 * 2 * b) ** 2 for a, b in [(1.0, 0.5), (2.0, -1.0),
                                                            (-1.0, 2.0), (0.5, 0.0)]) / 4
    assert float(model2.training_loss(x, y, t=torch.tensor([[0.75]]), noise=n)) == \
        pytest.approx(want2, rel=1e-6)


def test_noise_source_inference_uses_fixed_draws():
    torch.manual_seed(0)
    model = FlowAR(CFG, flow_source="noise", flow_steps=2)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(3, 1, 2, 2)
    a = model(x)
    torch.randn(10)  # the global stream moves; the evaluation noise does not
    assert torch.equal(a, model(x))
    # at init (zero velocity) the output is the noise itself, σ·ε: not the zero map
    fresh = FlowAR(CFG, flow_source="noise", flow_sigma=0.5)
    with torch.no_grad():
        assert 0.3 < float(fresh(x).std()) < 0.7


@pytest.mark.parametrize("steps,solver", [(1, "euler"), (3, "euler"), (2, "heun")])
def test_exact_linear_path_velocity_reaches_the_target(steps, solver):
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 7, 2, generator=g)
    y = torch.randn(5, 7, 2, generator=g)
    h = torch.zeros(5, 7, 4)

    def exact(z, t, _h):  # the straight path's field: v(z_t, t) = (y − z_t) / (1 − t)
        return (y - z) / (1 - t).view(-1, 1, 1)

    def constant(z, t, _h):  # the same field along the path: y − z₀ (Heun also probes t = 1)
        return y - z0

    field = constant if solver == "heun" else exact
    torch.testing.assert_close(integrate(z0, h, field, steps, solver), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_inference_is_deterministic_and_gradients_reach_every_parameter(head):
    torch.manual_seed(0)
    model = FlowAR(CFG, flow_steps=2, flow_head=head)
    for p in model.parameters():  # move off the zero init so every path is live
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(model(x), model(x))
    y = torch.rand(3, 1, 8, 8)
    model.training_loss(x, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_causality_across_scales():
    torch.manual_seed(1)
    model = FlowAR(VARConfig(width=16, scales=3, depth=2, heads=2)).eval()
    seq = torch.rand(2, 4 + 16 + 64, 1)
    ids = model.pyramid.scale_ids
    h0 = model.backbone(seq, ids)
    seq2 = seq.clone()
    seq2[:, 30] += 2.0  # a token of the finest scale
    h1 = model.backbone(seq2, ids)
    torch.testing.assert_close(h1[:, :20], h0[:, :20])
    # a prefix pass (inference) equals the full pass on those scales
    torch.testing.assert_close(model.backbone(seq[:, :20], model.pyramid.ids(2)), h0[:, :20])


def test_size_counts_backbone_and_head():
    model = FlowAR(CFG)
    d, c = CFG.width, CFG.channels
    # velocity head: z_in (c -> d), t_in (16 time features -> d), fc (d -> 2d), out (2d -> c)
    n_head = (c * d + d) + (16 * d + d) + (d * 2 * d + 2 * d) + (2 * d * c + c)
    assert sum(p.numel() for p in model.head.parameters()) == n_head
    assert model.num_params() == backbone_params(CFG) + n_head + 1  # + the source gain
    assert FlowAR(CFG, flow_source="noise").num_params() == backbone_params(CFG) + n_head


# The FLOP counter sees the ``reference`` attention backend (it has no formula for
# CPU's fused kernel). That backend multiplies the full T x T score matrix and then
# masks it; the closed forms count only attended (query, key) pairs (2 matmuls x 2
# FLOPs x d per pair and layer), so the masked-out pairs, read off the model's own
# mask, are added before comparing. Otherwise both count matmul FLOPs at 2 per
# multiply-add and nothing else, so the comparisons are exact.
FLOP_CFGS = [dataclasses.replace(CFG, backend="reference"),
             VARConfig(width=16, scales=4, heads=4, depth=2, layernorm=True, channels=3,
                       backend="reference")]


def _counted(fn, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def _masked_out(cfg: VARConfig, ids: torch.Tensor) -> int:
    mask = block_causal_mask(ids)
    return cfg.depth * 2 * 2 * cfg.width * (mask.numel() - int(mask.sum()))


@pytest.mark.parametrize("cfg", FLOP_CFGS)
def test_closed_form_flop_parts_match_the_counter(cfg):
    model = FlowAR(cfg).eval()
    b, c, d = 3, cfg.channels, cfg.width
    levels = model.pyramid.levels(torch.rand(b, c, cfg.s_first, cfg.s_first))
    for k in range(2, cfg.scales + 1):  # a backbone pass over scales 1..k, with its pyramid
        ids = model.pyramid.ids(k)
        counted = sum(_counted(model.pyramid.up, i, levels[i]) for i in range(k - 1))
        counted += _counted(model.backbone, torch.cat(levels[:k], -1).transpose(1, 2), ids)
        assert counted == b * (backbone_flops(cfg, k) + _masked_out(cfg, ids)), k
    n = 7  # the head with one t per token (as in training)
    z, t, h = torch.rand(b, n, c), torch.rand(b, n), torch.rand(b, n, d)
    assert _counted(model.head, z, t, h) == b * n * model.head.flops_per_token()


@pytest.mark.parametrize("cfg", FLOP_CFGS)
@pytest.mark.parametrize("steps,solver", [(1, "euler"), (4, "euler"), (2, "heun")])
@pytest.mark.parametrize("source,head", [("interp", "mlp"), ("noise", "mlp"),
                                         ("interp", "transformer")])
def test_flops_per_sample_matches_a_counted_inference_pass(cfg, steps, solver, source, head):
    model = FlowAR(cfg, flow_steps=steps, flow_solver=solver, flow_source=source,
                   flow_head=head).eval()
    b = 3
    counted = _counted(model, torch.rand(b, cfg.channels, cfg.s_first, cfg.s_first))
    # the last block of each prefix pass runs that prefix's last scale only: no masked pairs
    masked_out = sum(_masked_out(cfg, model.pyramid.ids(k)) * (cfg.depth - 1) // cfg.depth
                     for k in range(2, cfg.scales + 1))
    assert counted == b * (model.flops_per_sample() + masked_out)


def test_flowar_trial_runs_with_one_and_four_flow_steps():
    for fs in (1, 4):
        r = run_trial(TrialConfig(model="flowar", target="mlp", lipschitz=2.0, width=8,
                                  flow_steps=fs, steps=40, eval_every=20, n_eval=256))
        assert r.status == "completed" and r.err is not None and r.err < 1.0


def test_cli_flowar_sanity_target_reaches_1e2():
    import json

    from typer.testing import CliRunner

    from varbench.orchestrator.cli import app

    res = CliRunner().invoke(app, ["trial", "--model", "flowar", "--target", "upsample",
                                   "--interp", "bicubic", "--scales", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["err_ucb"] <= 1e-2 and out["reached"]["0.01"] is True


def test_flowar_variant_is_named_in_the_trial_and_the_spec():
    from varbench.sweeps.spec import ModelVariant

    assert TrialConfig(model="flowar").variant_name == "flowar-det"
    assert TrialConfig(model="flowar", flow_source="noise").variant_name == "flowar-noise"
    assert ModelVariant(family="flowar", flow_source="noise").label == "flowar-noise"
    assert ModelVariant(family="flowar").label == "flowar-det"
    r = run_trial(TrialConfig(model="flowar", flow_source="noise", flow_sigma=0.5, width=8,
                              steps=20, eval_every=10, n_eval=128))
    assert r.status == "completed" and r.config["flow_source"] == "noise"


def test_transformer_head_is_counted_in_n_and_attends_within_a_scale():
    d, c = CFG.width, CFG.channels
    model = FlowAR(CFG, flow_head="transformer")
    # z_in, t_in (16 -> d), t_mlp, cond, ada (d -> 6d), qkv (no bias), proj, fc (d -> 2d),
    # fc_out, ada_final (d -> 2d), out (d -> c)
    n_head = ((c * d + d) + (16 * d + d) + (d * d + d) + (d * d + d) + (d * 6 * d + 6 * d)
              + 3 * d * d + (d * d + d) + (d * 2 * d + 2 * d) + (2 * d * d + d)
              + (d * 2 * d + 2 * d) + (d * c + c))
    assert sum(p.numel() for p in model.head.parameters()) == n_head
    assert model.num_params() == backbone_params(CFG) + n_head + 1
    assert TrialConfig(model="flowar", flow_head="transformer").variant_name == \
        "flowar-det-transformer"
    # training holds scales 2..K in one call: a token of one scale never moves another's
    torch.manual_seed(0)
    for p in model.head.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    z, t, h = torch.rand(2, 20, c), torch.rand(2, 20), torch.rand(2, 20, d)
    spans = [slice(0, 16), slice(16, 20)]
    v0 = model.head(z, t, h, spans)
    z2 = z.clone()
    z2[:, 3] += 1.0
    v1 = model.head(z2, t, h, spans)
    torch.testing.assert_close(v1[:, 16:], v0[:, 16:])
    assert (v1[:, :16] - v0[:, :16]).abs().max() > 1e-4


def test_inference_settings_are_evaluated_on_one_training(monkeypatch):
    """Trials that differ only in flow_steps / flow_solver would train the same weights:
    one trial trains once and reports every (steps, solver) of ``flow_evals``."""
    from varbench.workers import training

    calls = []
    real = FlowAR.training_loss

    def counted(self, x, y, **kw):
        calls.append(1)
        return real(self, x, y, **kw)

    monkeypatch.setattr(FlowAR, "training_loss", counted)
    cfg = TrialConfig(model="flowar", width=8, steps=20, eval_every=100, n_eval=128,
                      flow_steps=2, flow_evals=("1:euler", "2:euler", "4:euler", "2:heun"))
    r = training.train_one(cfg)
    assert len(calls) == 20  # one training run, whatever the number of settings
    assert [(e["flow_steps"], e["flow_solver"]) for e in r.flow_evals] == [
        (1, "euler"), (2, "euler"), (4, "euler"), (2, "heun")]
    own = r.flow_evals[1]  # the trial's own setting, evaluated again: the same number
    assert own["err_ucb"] == pytest.approx(r.err_ucb, rel=1e-6) and own["flops"] == r.flops
    flops = [e["flops"] for e in r.flow_evals]
    assert flops[0] < flops[1] < flops[2] and flops[3] == flops[2]  # Heun: 2 evaluations a step
