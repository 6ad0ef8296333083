import dataclasses
import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from varbench.models.attention import block_causal_mask
from varbench.models.interp import upsample
from varbench.models.var import (
    VAR,
    VARConfig,
    backbone_flops,
    position_frequencies,
    redundant_params,
    sincos_2d,
    var_params,
)

CONFIGS = [
    VARConfig(width=8, scales=3),
    VARConfig(width=16, scales=4, heads=4, depth=2, layernorm=True, pos="learned", channels=3),
    VARConfig(width=12, scales=2, ffn_ratio=2, heads=3, interp="nearest", s_first=3, s_last=9),
    VARConfig(),  # the theorem's model
]


@pytest.mark.parametrize(
    "cfg,n",
    [
        # d=32, c=1, K=3, one block, FFN ratio 4, no LayerNorm, sincos (no parameters)
        (VARConfig(),
         (1 * 32 + 32) + 3 * 32                          # embed, level embedding
         + (32 * 96 + 2 * 32) + (32 * 32 + 32)           # qkv (q and v biases), proj
         + (32 * 128 + 128) + (128 * 32 + 32)            # FFN in, out
         + (32 * 1 + 1) + 1),                            # readout, gain
        # d=16, c=3, K=4 (sides 2,3,5,8: 102 tokens), two blocks, LayerNorm, learned position
        (VARConfig(width=16, scales=4, heads=4, depth=2, layernorm=True, pos="learned", channels=3),
         (3 * 16 + 16) + 4 * 16 + 102 * 16
         + 2 * ((2 * 16) + (16 * 48 + 32) + (16 * 16 + 16)
                + (2 * 16) + (16 * 64 + 64) + (64 * 16 + 16))
         + 2 * 16                                        # final LayerNorm
         + (16 * 3 + 3) + 1),
        # d=12, c=1, K=2, FFN ratio 2 (heads add no parameters)
        (VARConfig(width=12, scales=2, ffn_ratio=2, heads=3, interp="nearest", s_first=3, s_last=9),
         (12 + 12) + 2 * 12 + (12 * 36 + 24) + (12 * 12 + 12) + (12 * 24 + 24) + (24 * 12 + 12)
         + (12 + 1) + 1),
    ],
)
def test_param_count_matches_a_hand_count(cfg, n):
    assert var_params(cfg) == n
    assert VAR(cfg).num_params() == n


def test_closed_form_param_count_matches_the_built_model_over_a_grid():
    grid = itertools.product((4, 12), (1, 2), (1, 3), (1, 2), (2, 3), (False, True),
                             ("sincos", "learned"))
    for width, heads, depth, ffn_ratio, scales, layernorm, pos in grid:
        for channels in (1, 3):
            cfg = VARConfig(width=width, heads=heads, depth=depth, ffn_ratio=ffn_ratio,
                            scales=scales, layernorm=layernorm, pos=pos, channels=channels)
            model = VAR(cfg)
            built = sum(p.numel() for p in model.parameters())
            assert var_params(cfg) == built == model.num_params(), cfg


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


@pytest.mark.parametrize("cfg", CONFIGS)
def test_closed_form_flops_match_a_counted_forward_pass(cfg):
    """flops_per_sample (2 per multiply-add, matmuls only) against torch's FLOP counter.

    The counter needs the ``reference`` backend (it has no formula for CPU's fused
    attention kernel). That backend multiplies the full T x T score matrix and then
    masks it, while the closed form counts only the attended (query, key) pairs: add
    the masked-out pairs' 2 matmuls x 2 FLOPs x d per layer, taken from the model's
    own mask, for every layer but the last (there only the last scale's queries
    run, and they see every key). Nothing else is approximated, so the tolerance
    is zero.
    """
    model = VAR(dataclasses.replace(cfg, backend="reference")).eval()
    batch = 3
    x = torch.rand(batch, cfg.channels, cfg.s_first, cfg.s_first)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    mask = block_causal_mask(model.pyramid.scale_ids)
    masked_out = mask.numel() - int(mask.sum())
    dense_extra = (cfg.depth - 1) * 2 * 2 * masked_out * cfg.width
    assert counter.get_total_flops() == batch * (model.flops_per_sample() + dense_extra)


def test_attention_has_no_key_bias_and_n_drops_by_d():
    cfg = VARConfig(width=8, depth=2)
    model = VAR(cfg)
    names = [n for n, _ in model.named_parameters()]
    assert not any("k_bias" in n for n in names) and model.backbone.blocks[0].attn.qkv.bias is None
    # with a key bias (3d instead of 2d per layer) N would be d per layer larger
    with_key_bias = var_params(cfg) + cfg.depth * cfg.width
    assert with_key_bias - model.num_params() == cfg.depth * cfg.width
    # and such a bias is inert: a constant added to every key leaves the output alone
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.rand(3, 1, 2, 2)
    y0 = model(x)
    attn = model.backbone.blocks[0].attn
    kb = 3.0 * torch.randn(cfg.width)
    orig = attn.qkv_bias
    attn.qkv_bias = lambda: orig() + torch.cat([torch.zeros(8), kb, torch.zeros(8)])
    torch.testing.assert_close(model(x), y0, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_effective_n_leaves_out_only_biases_that_fold_away():
    """Fold every bias ``redundant_params`` counts into the others: the map is unchanged."""
    cfg = VARConfig(width=8, depth=2, heads=2, backend="reference")
    torch.manual_seed(0)
    model = VAR(cfg)
    for p in model.parameters():
        p.data.add_(0.2 * torch.randn_like(p))
    x = torch.rand(4, 1, 2, 2)
    want = model(x)
    bb = model.backbone
    bb.level.weight += bb.embed.bias  # embedding bias -> level embedding
    bb.embed.bias.zero_()
    zeroed = cfg.width
    c = torch.zeros(cfg.width)  # the constant the stream now lacks
    for blk in bb.blocks:
        a, f = blk.attn, blk.ffn
        wq, _, wv = a.qkv.weight.split(cfg.width)
        a.q_bias += wq @ c
        a.proj.bias += a.proj.weight @ (wv @ c + a.v_bias)
        c = c + a.proj.bias
        f.fc.bias += f.fc.weight @ c
        c = c + f.out.bias
        for b in (a.v_bias, a.proj.bias, f.out.bias):
            b.zero_()
            zeroed += b.numel()
    model.readout.bias += model.readout.weight @ c
    assert zeroed == redundant_params(cfg)
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)
    assert model.num_params_effective() == model.num_params() - zeroed


@pytest.mark.parametrize("s_last", [4, 8, 9, 16])
@pytest.mark.parametrize("width", [4, 8, 32, 256])
def test_position_code_has_no_frequency_above_nyquist_and_no_constant_column(s_last, width):
    freqs = position_frequencies(s_last, width)
    assert float(freqs.max()) < math.pi * s_last  # Nyquist of the finest grid, pixel spacing 1/s
    assert float(freqs.min()) > 0
    code = sincos_2d([2, s_last], width)[-s_last * s_last:]  # the finest scale
    n_live = 4 * max(width // 4, 1)
    std = code[:, :min(n_live, width)].std(dim=0)
    assert float(std.min()) > 1e-3  # every sinusoid column varies on the finest grid


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("depth", [1, 2])
def test_reading_only_the_last_scale_equals_the_full_pass(backend, depth):
    torch.manual_seed(0)
    cfg = VARConfig(width=8, scales=3, depth=depth, heads=2, layernorm=depth == 2, backend=backend)
    model = VAR(cfg)
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    tokens, _ = model.pyramid(torch.rand(2, 1, 2, 2))
    ids = model.pyramid.scale_ids
    full = model.backbone(tokens, ids)
    torch.testing.assert_close(model.backbone(tokens, ids, read=64), full[:, -64:])
    # 2 -> 8 with K = 3: 84 tokens, 64 read; the last block counts 64 queries, not 84
    t, read = 84, 64
    d, r = cfg.width, cfg.ffn_ratio
    saved = (t - read) * (2 * d * d + 2 * d * d + 2 * 2 * d * r * d) + 2 * 2 * d * (4 * 4 + 16 * 20)
    assert backbone_flops(cfg) - backbone_flops(cfg, read_scales=1) == saved


@torch.no_grad()
def test_var_init_is_width_aware_and_scales_the_output_projections():
    cfg = VARConfig(width=64, depth=2, init="var")
    torch.manual_seed(0)
    model = VAR(cfg)
    std = math.sqrt(1 / (3 * 64))
    bb = model.backbone
    assert abs(float(bb.blocks[0].attn.qkv.weight.std()) - std) < 0.1 * std
    assert abs(float(bb.blocks[1].ffn.out.weight.std()) - std / 2) < 0.1 * std / 2  # √(2·2)
    assert float(model.readout.weight.abs().max()) == 0.0  # still the zero map at init
    normal = VAR(VARConfig(width=64, init="normal")).backbone.embed.weight
    assert abs(float(normal.std()) - 0.02) < 0.005
    assert VARConfig().init == "var"  # the default (README: the nightly cells)
