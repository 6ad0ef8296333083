"""`make bench`: measured ratios, all taken in one run on this machine.

1. model-steps/s of population training (R = 8) vs a plain one-model-at-a-time
   loop doing the same work, widths 8, 32, 128;
2. training FLOP rate at width 256 as a fraction of this machine's fp32
   matmul rate, measured in the same run;
3. attention backends on CPU (forward + backward; flex forward only, PyTorch
   has no flex backward on CPU);
4. sweeps/quick.yaml wall time vs the sum of its trials' compute time / cores,
   and the fixed costs around it: Ray start (``ray.init`` of the embedded local
   cluster, timed on its own), the driver's set-up, and its per-trial overhead,
   two ways: loop time outside ``ray.wait`` per trial (the driver's own work:
   asking Optuna, sending, recording, MLflow, frontier), and (loop wall -
   compute / slots) per trial (idle slots, whatever the cause). The figures are
   also printed as one JSON line (``fixed_cost``).

    .venv/bin/python -m benchmarks.run [--skip-sweep] [--sweep-only] [--spec SPEC]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from varbench.models.attention import attention
from varbench.models.var import var_flops
from varbench.workers.config import TrialConfig
from varbench.workers.population import BATCH_MAX_ACTIVATIONS, batched, run_population
from varbench.workers.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent
THREADS = os.cpu_count() or 1


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {THREADS} cores, torch {torch.__version__}"


def population_vs_plain(r: int = 8) -> list[str]:
    rows = ["| width | plain loop (model-steps/s) | population R=8 as run | stacked (forced) | ratio as run | ratio stacked |",
            "|---|---|---|---|---|---|"]
    for w in (8, 32, 128):
        steps = 40 if w < 128 else 10
        cfgs = [TrialConfig(target="mlp", lipschitz=2.0, width=w, steps=steps, eval_every=10**6,
                            n_eval=64, seed=s, eps=(1e-9,)) for s in range(r)]
        run_trial(cfgs[0])  # warm-up
        plain = sum(run_trial(c).sec_per_step for c in cfgs[:3]) / 3
        as_run = run_population(cfgs)[0].sec_per_step
        run_population(cfgs[:2], max_activations=1 << 62)  # warm-up, stacked
        stacked = run_population(cfgs, max_activations=1 << 62)[0].sec_per_step
        rows.append(f"| {w} | {1 / plain:.1f} | {1 / as_run:.1f}{' (stacked)' if batched(cfgs[0]) else ' (one by one)'} "
                    f"| {1 / stacked:.1f} | {plain / as_run:.2f} | {plain / stacked:.2f} |")
    return rows


def matmul_rate(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flop_fraction() -> list[str]:
    cfg = TrialConfig(target="mlp", lipschitz=2.0, width=256, steps=12, eval_every=10**6,
                      n_eval=64, eps=(1e-9,))
    run_trial(replace(cfg, steps=2))
    res = run_trial(cfg)
    train_flops = 3 * var_flops(cfg.var_config()) * cfg.batch_size  # fwd + bwd ≈ 3x fwd
    rate = train_flops / res.sec_per_step
    peak = matmul_rate()
    return [f"width 256 training: {rate / 1e9:.1f} GFLOP/s; fp32 matmul (2048²): {peak / 1e9:.1f} GFLOP/s; "
            f"fraction {rate / peak:.2f}"]


def attention_backends() -> list[str]:
    rows = ["| tokens (sides) | width | reference fwd+bwd ms | sdpa fwd+bwd ms | flex fwd ms (CPU, eager) |",
            "|---|---|---|---|---|"]
    for sides in ([2, 4, 8], [2, 4, 8, 16]):
        ids = torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)])
        t = ids.numel()
        for d in (64, 256):
            q, k, v = (torch.randn(16, 1, t, d, requires_grad=True) for _ in range(3))
            times = {}
            for be in ("reference", "sdpa"):
                attention(q, k, v, ids, be).sum().backward()
                t0 = time.perf_counter()
                for _ in range(5):
                    attention(q, k, v, ids, be).sum().backward()
                times[be] = (time.perf_counter() - t0) / 5 * 1000
            with torch.no_grad():
                attention(q, k, v, ids, "flex")
                t0 = time.perf_counter()
                for _ in range(5):
                    attention(q, k, v, ids, "flex")
                times["flex"] = (time.perf_counter() - t0) / 5 * 1000
            rows.append(f"| {t} ({'-'.join(map(str, sides))}) | {d} | {times['reference']:.2f} | "
                        f"{times['sdpa']:.2f} | {times['flex']:.2f} |")
    return rows


def sweep_efficiency(spec_path: Path = ROOT / "sweeps" / "quick.yaml") -> list[str]:
    from varbench.orchestrator import cluster
    from varbench.orchestrator.driver import run_sweep
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import load_spec

    spec = load_spec(spec_path)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        cluster.connect()  # what the driver's preflight does first; timed on its own here
        ray_start = time.perf_counter() - t0
        slots = cluster.capacity(spec.resources.cpus, spec.resources.gpus)
        out = run_sweep(spec, resolve_settings(workdir=work))
        total = time.perf_counter() - t0
    ideal = out.compute_seconds / THREADS
    loop = out.seconds - out.setup_seconds
    n = max(out.trials_run, 1)
    fixed = {
        "spec": spec_path.name, "trials": out.trials_run, "slots": slots,
        "ray_start_s": round(ray_start, 3),
        "driver_setup_s": round(out.setup_seconds, 3),
        "loop_s": round(loop, 3),
        "loop_in_ray_wait_s": round(out.wait_seconds, 3),
        "driver_work_per_trial_ms": round(1000 * (loop - out.wait_seconds) / n, 1),
        "idle_per_trial_ms": round(1000 * (loop - out.compute_seconds / slots) / n, 1),
        "trial_compute_s": round(out.compute_seconds, 3),
        "total_s": round(total, 3),
    }
    return [f"{spec_path.name}: {out.trials_recorded} trials, total {total:.1f} s (Ray start included), "
            f"sweep {out.seconds:.1f} s, trial compute {out.compute_seconds:.1f} s over {THREADS} cores "
            f"-> efficiency {ideal / out.seconds:.2f} (sweep) / {ideal / total:.2f} (total)",
            f"fixed costs: Ray start {ray_start:.2f} s, driver set-up {out.setup_seconds:.2f} s "
            f"(lease, studies, first trials sent), loop {loop:.1f} s of which {out.wait_seconds:.1f} s "
            f"in ray.wait; per trial: driver work {fixed['driver_work_per_trial_ms']:.0f} ms, "
            f"idle slot time {fixed['idle_per_trial_ms']:.0f} ms ({slots} slots)",
            "fixed_cost " + json.dumps(fixed)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--sweep-only", action="store_true", help="only part 4 (fixed costs)")
    ap.add_argument("--spec", type=Path, default=ROOT / "sweeps" / "quick.yaml",
                    help="the sweep part 4 runs")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    print(f"machine: {machine()}")
    if args.sweep_only:
        print("\n4. orchestration efficiency")
        print("\n".join(sweep_efficiency(args.spec)))
        return
    print(f"\n1. population vs plain loop (batching threshold: width x batch x tokens <= {BATCH_MAX_ACTIVATIONS})")
    print("\n".join(population_vs_plain()))
    print("\n2. FLOP rate")
    print("\n".join(flop_fraction()))
    print("\n3. attention backends (batch 16, 1 head)")
    print("\n".join(attention_backends()))
    if not args.skip_sweep:
        print("\n4. orchestration efficiency")
        print("\n".join(sweep_efficiency(args.spec)))


if __name__ == "__main__":
    main()
