import pytest
import torch

from varbench.models.interp import upsample
from varbench.models.var import VAR, VARConfig, var_params


@pytest.mark.parametrize(
    "cfg",
    [
        VARConfig(width=8, scales=3),
        VARConfig(width=16, scales=4, heads=4, depth=2, layernorm=True, pos="learned", channels=3),
        VARConfig(width=12, scales=2, ffn_ratio=2, heads=3, interp="nearest", s_first=3, s_last=9),
    ],
)
def test_param_count_closed_form(cfg):
    model = VAR(cfg)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert var_params(cfg) == model.num_params()


def test_pyramid_first_scale_is_input_and_levels_interpolate():
    cfg = VARConfig(channels=2, s_first=2, s_last=8, scales=3, interp="bilinear")
    model = VAR(cfg)
    x = torch.rand(5, 2, 2, 2)
    tokens, last = model.pyramid(x)
    assert tokens.shape == (5, 4 + 16 + 64, 2)
    torch.testing.assert_close(tokens[:, :4, :], x.reshape(5, 2, 4).transpose(1, 2))
    lvl2 = upsample("bilinear", x, 4)
    torch.testing.assert_close(tokens[:, 4:20, :], lvl2.reshape(5, 2, 16).transpose(1, 2))
    torch.testing.assert_close(last, upsample("bilinear", lvl2, 8).reshape(5, 2, 64), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_finer_scale_token_never_changes_coarser_outputs(backend):
    torch.manual_seed(0)
    cfg = VARConfig(width=16, scales=3, depth=2, heads=2, backend=backend)
    model = VAR(cfg).eval()
    tokens, _ = model.pyramid(torch.rand(2, 1, 2, 2))
    ids = model.pyramid.scale_ids
    h0 = model.backbone(tokens, ids)
    changed = tokens.clone()
    changed[:, 4 + 5, :] += 3.0  # a token of scale 1 (side 4)
    h1 = model.backbone(changed, ids)
    torch.testing.assert_close(h1[:, :4], h0[:, :4])  # scale 0 untouched
    assert (h1[:, 4:] - h0[:, 4:]).abs().max() > 1e-4  # later scales do see it


def test_gain_represents_one_step_bicubic_exactly():
    cfg = VARConfig(width=8, scales=2, interp="bicubic")
    model = VAR(cfg)
    with torch.no_grad():
        model.gain.fill_(0.7)
    x = torch.rand(3, 1, 2, 2)
    torch.testing.assert_close(model(x), 0.7 * upsample("bicubic", x, 8), atol=1e-6, rtol=1e-5)


def test_flops_grow_with_width_and_are_positive():
    f = [VAR(VARConfig(width=w)).flops_per_sample() for w in (8, 16, 32)]
    assert 0 < f[0] < f[1] < f[2]
