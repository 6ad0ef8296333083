"""The decisions the GPU path makes, pinned on CPU (CI has no GPU), plus the
CUDA checks that run where there is one (`-m cuda`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from varbench.models.attention import (
    MEASURED,
    TIE,
    Measured,
    attention,
    choose_backend,
    resolve_backend,
)
from varbench.workers.config import TrialConfig
from varbench.workers.population import (
    CPU_PACK,
    GPU_PACK,
    batched,
    population_size,
    replica_bytes,
    run_population,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _ids(sides):
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)])


# --- backend selection ----------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_never_runs_a_backend_measured_10pct_slower(device):
    for tokens, head_dim in itertools.product((21, 85, 340, 680, 1360, 2240), (4, 8, 16, 64, 512)):
        chosen = choose_backend(device, head_dim, tokens)
        near = min((m for m in MEASURED if m.device == device),
                   key=lambda m: math.log(m.tokens / tokens) ** 2
                   + math.log(m.head_dim / head_dim) ** 2)
        assert near.ms[chosen] <= min(near.ms.values()) * TIE, (device, tokens, head_dim)


def test_auto_picks_the_measured_winner_per_device_and_shape():
    # the H200 figures of issue 11: sdpa 0.42 ms, reference 0.73, flex 2.2 at 85 tokens
    assert choose_backend("cuda", 8, 85) == "sdpa"  # flex crashed here (head dim < 16)
    assert choose_backend("cuda", 32, 85) == "sdpa"  # and was 9x slower per trial step
    assert choose_backend("cpu", 64, 84) == "sdpa"
    assert choose_backend("cpu", 256, 340) == "reference"  # 25.4 vs 28.6 ms on CPU
    assert choose_backend("mps", 64, 85) == "sdpa"  # no figures: what runs everywhere


def test_ties_prefer_no_compilation_and_a_real_gain_picks_flex():
    near_tie = (Measured("cuda", 680, 64, {"sdpa": 1.0, "flex": 0.95}, "synthetic"),)
    clear = (Measured("cuda", 680, 64, {"sdpa": 1.0, "flex": 0.5}, "synthetic"),)
    assert choose_backend("cuda", 64, 680, near_tie) == "sdpa"
    assert choose_backend("cuda", 64, 680, clear) == "flex"
    # the nearest row decides: a long-sequence win does not leak to short ones
    rows = clear + (Measured("cuda", 85, 64, {"sdpa": 0.4, "flex": 2.2}, "synthetic"),)
    assert choose_backend("cuda", 64, 100, rows) == "sdpa"
    assert choose_backend("cuda", 64, 1000, rows) == "flex"


def test_explicit_backend_is_kept():
    for name in ("reference", "sdpa", "flex"):
        assert resolve_backend(name, "cuda", 8, 85) == name


# --- flex padding (CPU flex runs forward) ------------------------------------------


@pytest.mark.parametrize("head_dim", [4, 8, 12, 16, 24])
def test_flex_with_padded_heads_equals_reference(head_dim):
    ids = _ids([1, 2, 3, 4])
    g = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(3, 2, ids.numel(), head_dim, generator=g) for _ in range(3))
    with torch.no_grad():
        out = attention(q, k, v, ids, "flex")
        ref = attention(q, k, v, ids, "reference")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# --- populations sized by device ---------------------------------------------------


def test_gpu_stacks_every_width_cpu_only_small_ones():
    for w in (8, 32, 128, 512):
        cfg = TrialConfig(width=w)
        assert batched(cfg, "cuda")
        assert batched(cfg, "cpu") == (w <= 16)
    assert not batched(TrialConfig(model="flowar"), "cuda")


def test_population_size_follows_memory_and_caps_at_64():
    small, big = TrialConfig(width=8), TrialConfig(width=512, s_last=16, scales=4)
    assert population_size(small, "cpu") == CPU_PACK
    assert population_size(TrialConfig(width=128), "cpu") == 1
    assert population_size(small, "cuda", 80 << 30) == GPU_PACK
    fit = population_size(big, "cuda", 8 << 30)
    assert 1 <= fit < GPU_PACK
    assert fit * replica_bytes(big) <= 0.5 * (8 << 30) < (fit + 1) * replica_bytes(big)
    assert population_size(big, "cuda", 1 << 20) == 1  # never zero
    assert replica_bytes(replace(small, batch_size=128)) > replica_bytes(small)


def test_driver_packs_to_the_device_population_size(tmp_path):
    """The driver's packing limit is the device's population size (CPU: 4)."""
    from varbench.orchestrator.driver import Driver
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import parse_spec

    base = {"name": "pack", "cells": {"models": ["var"], "targets": ["mlp"], "lipschitz": [1.0]},
            "eps": [0.1]}
    cpu = Driver(parse_spec(base), resolve_settings(workdir=str(tmp_path)))
    gpu = Driver(parse_spec({**base, "resources": {"cpus": 1, "gpus": 1}}),
                 resolve_settings(workdir=str(tmp_path)))
    assert (cpu.device_type, gpu.device_type) == ("cpu", "cuda")
    cfg = TrialConfig(width=8)
    assert population_size(cfg, cpu.device_type) == CPU_PACK
    assert population_size(cfg, gpu.device_type) == GPU_PACK  # one population task per GPU
    assert not any(tmp_path.iterdir())  # building a driver writes nothing


def test_cpu_population_stacks_a_small_shape():
    cfgs = [TrialConfig(width=8, steps=20, eval_every=10, n_eval=64, seed=s, eps=(1e-9,))
            for s in range(3)]
    together = run_population(cfgs)
    assert all(r.population == 3 for r in together)


# --- on a GPU -------------------------------------------------------------------------


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("backend,head_dim", [(b, d) for b in ("sdpa", "flex") for d in (4, 8, 16, 64)])
def test_cuda_backends_match_reference_with_padding(backend, head_dim):
    ids = _ids([1, 2, 3, 4, 6, 8]).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(4, 2, ids.numel(), head_dim, device="cuda", generator=g,
                           requires_grad=True) for _ in range(3))
    ref = attention(q, k, v, ids, "reference")
    gref = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
    out = attention(q, k, v, ids, backend)
    gout = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("width", [4, 8, 16, 64])
def test_cuda_trial_with_auto_backend(width):
    from varbench.workers.trial import run_trial

    res = run_trial(TrialConfig(width=width, steps=50, eval_every=25, n_eval=256, device="cuda"))
    assert res.status == "completed", res.reason
    assert res.device.startswith("cuda")


@pytest.mark.slow
def test_gpu_bench_script_runs(capsys):
    """`make bench-gpu`'s script, on CPU with tiny shapes: every section prints its table."""
    from benchmarks import gpu_bench

    gpu_bench.main(["--device", "cpu", "--smoke", "--budget-s", "120"])
    out = capsys.readouterr().out
    for heading in ("1. attention", "2. training step", "3. population"):
        assert heading in out
    assert "| 85 | 16 |" in out and "skipped" not in out
