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
from varbench.workers.engine import (
    STEP_MEASURED,
    StepMeasured,
    choose_step_mode,
    matmul_precision,
    resolve_step_mode,
)
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
    # the quick shapes on CPU (benchmarks/attention_cpu.py): narrow heads run bmm
    assert [choose_backend("cpu", d, 84) for d in (4, 8, 12, 16, 32)] == [
        "bmm", "bmm", "bmm", "sdpa", "sdpa"]
    assert choose_backend("cuda", 8, 85) != "bmm"  # measured on CPU only
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
    for name in ("reference", "sdpa", "bmm", "flex"):
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


# --- the training step: eager, compiled, CUDA graphs; TF32 --------------------------


def test_step_mode_auto_is_eager_until_measured():
    assert STEP_MEASURED == ()  # no GPU has run the compiled step yet (README, GPU section)
    for device in ("cpu", "cuda"):
        assert choose_step_mode(device, 32, 2000) == "eager"
        assert resolve_step_mode("auto", torch.device(device), "var", 32, 2000) == "eager"


def test_step_mode_rule_pays_compilation_only_where_it_is_earned():
    # synthetic figures of the shape `make bench-gpu` prints (ms/step, compile s)
    rows = (StepMeasured("cuda", 32, {"eager": 4.0, "compiled": 2.0, "graphs": 0.8},
                         {"compiled": 30.0, "graphs": 40.0}, "synthetic"),)
    assert choose_step_mode("cuda", 32, 2000, rows) == "eager"  # 8 s vs 34 s vs 41.6 s
    assert choose_step_mode("cuda", 32, 100_000, rows) == "graphs"  # 400 vs 230 vs 120 s
    assert choose_step_mode("cuda", 40, 100_000, rows) == "graphs"  # nearest width decides
    tie = (StepMeasured("cuda", 32, {"eager": 4.0, "compiled": 1.0, "graphs": 0.95},
                        {"compiled": 20.0, "graphs": 20.0}, "synthetic"),)
    assert choose_step_mode("cuda", 32, 100_000, tie) == "compiled"  # within 10%: less machinery
    cpu = (StepMeasured("cpu", 8, {"eager": 10.0, "compiled": 5.0, "graphs": 1.0},
                        {"compiled": 20.0, "graphs": 20.0}, "synthetic"),)
    assert choose_step_mode("cpu", 8, 100_000, cpu) == "compiled"  # graphs needs CUDA


def test_step_mode_resolution_records_what_runs():
    cpu = torch.device("cpu")
    assert resolve_step_mode("graphs", cpu, "var", 8, 10) == "compiled"
    assert resolve_step_mode("compiled", cpu, "flowar", 8, 10) == "eager"
    assert resolve_step_mode("eager", cpu, "var", 8, 10) == "eager"
    with pytest.raises(ValueError, match="step mode"):
        resolve_step_mode("fast", cpu, "var", 8, 10)


def test_matmul_precision_is_scoped_to_the_block():
    before = torch.get_float32_matmul_precision()
    with matmul_precision("high"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), matmul_precision("high"):
        raise RuntimeError("a trial that fails")
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="matmul precision"), matmul_precision("medium"):
        pass


def test_trial_settings_refuse_unknown_step_mode_and_precision():
    from varbench.sweeps.fields import build_trial_config
    from varbench.workers.errors import UserError

    with pytest.raises(UserError, match="--step-mode"):
        build_trial_config(step_mode="fast")
    with pytest.raises(UserError, match="--matmul-precision"):
        build_trial_config(matmul_precision="medium")
    assert build_trial_config(step_mode="graphs", matmul_precision="high").step_mode == "graphs"


def test_results_record_step_mode_and_precision():
    """Both worker paths apply the trial's precision, restore the process's, and say so."""
    from varbench.workers.training import train_one

    before = torch.get_float32_matmul_precision()
    cfg = TrialConfig(width=8, steps=3, eval_every=2, n_eval=64, eps=(1e-9,),
                      matmul_precision="high", step_mode="eager", device="cpu")
    for res in [train_one(cfg)] + run_population([replace(cfg, seed=s) for s in range(2)]):
        assert (res.step_mode, res.matmul_precision, res.compile_seconds) == ("eager", "high", 0)
        assert res.to_dict()["matmul_precision"] == "high"
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.slow
def test_compiled_step_matches_eager_on_cpu():
    """The whole step (forward, loss, backward, clipping, optimizer) through torch.compile
    ends where eager ends, for one model and for a population (Inductor on CPU: tens of
    seconds of compilation each on the CI machine)."""
    from varbench.workers.training import train_one

    base = TrialConfig(width=8, steps=4, eval_every=2, n_eval=64, eps=(1e-9,), device="cpu")
    eager = train_one(replace(base, step_mode="eager"))
    fast = train_one(replace(base, step_mode="compiled"))
    assert (eager.step_mode, fast.step_mode) == ("eager", "compiled")
    assert fast.compile_seconds > 0 and eager.compile_seconds == 0
    assert fast.err == pytest.approx(eager.err, rel=1e-5)
    assert fast.final_loss == pytest.approx(eager.final_loss, rel=1e-5)
    monitored = [[v for _, v in r.curves[0]["monitor_err_ucb"]] for r in (eager, fast)]
    assert len(monitored[0]) == 2 and monitored[1] == pytest.approx(monitored[0], rel=1e-5)
    cfgs = [replace(base, seed=s, lr=lr) for s, lr in ((0, 1e-2), (1, 3e-3))]
    pe = run_population([replace(c, step_mode="eager") for c in cfgs])
    pc = run_population([replace(c, step_mode="compiled") for c in cfgs])
    assert [r.step_mode for r in pc] == ["compiled"] * 2 and pc[0].population == 2
    assert [r.err for r in pc] == pytest.approx([r.err for r in pe], rel=1e-5)
    assert pe[1].err != pytest.approx(pe[0].err, rel=1e-3)  # the replicas did differ


def test_torch_func_population_matches_stacked_population():
    """gpu_bench's two population steps train the same models: after a few steps
    every replica's outputs agree (so the benchmark compares like with like)."""
    from benchmarks.gpu_bench import FuncPopulation, StackedStep, population_batches

    cfgs = [TrialConfig(width=8, seed=s, device="cpu") for s in range(3)]
    cpu = torch.device("cpu")
    func, stacked = FuncPopulation(cfgs, cpu), StackedStep(cfgs, cpu)
    batches = list(population_batches(cfgs, cpu, 4))
    for i, (x, y) in enumerate(batches[:3]):
        factor = (i + 1) / cfgs[0].warmup
        torch.testing.assert_close(func.step(x, y, factor), stacked.step(x, y, factor),
                                   atol=1e-6, rtol=1e-5)
    x = batches[3][0]
    torch.testing.assert_close(func.predict(x), stacked.predict(x), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stacked.predict(x)[0], stacked.predict(x)[1])


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


@pytest.mark.cuda
@CUDA
def test_cuda_graph_steps_match_eager():
    """The CUDA-graph step ends where eager ends on a GPU (plain compiled: on CPU,
    test_compiled_step_matches_eager_on_cpu; its GPU timing: gpu_bench): one model
    (torch.optim.AdamW traced by Dynamo) and a population (StackedAdamW's moments
    marked static for the graphs; every replica active, so the unmasked update)."""
    from varbench.workers.training import train_one

    base = TrialConfig(width=16, steps=30, eval_every=10, n_eval=512, eps=(1e-9,),
                       device="cuda")
    runs = {m: train_one(replace(base, step_mode=m)) for m in ("eager", "graphs")}
    assert runs["graphs"].step_mode == "graphs" and runs["graphs"].compile_seconds > 0
    assert runs["graphs"].err == pytest.approx(runs["eager"].err, rel=1e-3)
    cfgs = [replace(base, seed=s, lr=lr) for s, lr in ((0, 1e-2), (1, 3e-3), (2, 1e-3))]
    pops = {m: run_population([replace(c, step_mode=m) for c in cfgs])
            for m in ("eager", "graphs")}
    assert pops["graphs"][0].step_mode == "graphs" and pops["graphs"][0].population == 3
    assert [r.err for r in pops["graphs"]] == pytest.approx([r.err for r in pops["eager"]],
                                                            rel=1e-3)


@pytest.mark.cuda
@CUDA
def test_cuda_tf32_trial_runs_and_restores_precision():
    from varbench.workers.training import train_one

    res = train_one(TrialConfig(width=32, steps=20, eval_every=10, n_eval=256,
                                matmul_precision="high", device="cuda"))
    assert res.status == "completed" and res.matmul_precision == "high"
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.slow
def test_gpu_bench_script_runs(capsys):
    """`make bench-gpu`'s script, on CPU with tiny shapes: every section prints its table."""
    from benchmarks import gpu_bench

    gpu_bench.main(["--device", "cpu", "--smoke", "--budget-s", "120"])
    out = capsys.readouterr().out
    for heading in ("1. attention", "2. training step", "3. TF32", "4. population",
                    "5. torch.func"):
        assert heading in out
    assert "| 85 | 16 |" in out and "out of time budget" not in out
    assert "flex fwd+bwd: not measured on cpu" in out  # said, not silently left out
    assert "paste into MEASURED" in out and "paste into STEP_MEASURED" in out
