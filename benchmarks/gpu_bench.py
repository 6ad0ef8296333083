"""`make bench-gpu`: the GPU engine's figures, every row a ratio measured in one run.

1. attention fwd+bwd per backend (reference / sdpa / flex / auto) at 85 to 2,240
   tokens (VAR's layouts up to 512 px) and head widths 16-512, with what
   ``auto`` chose; flex's compile time printed apart;
2. one training step per width, eager and with ``torch.compile`` (compile time
   apart), the FLOP rate beside it;
3. population training: model-steps/s for R = 1, 8, 32, 64 stacked replicas at
   widths 8, 32, 128, 512, against the plain loop.

Imports only torch and varbench.models / varbench.workers, so it runs on a GPU
machine that has nothing else (benchmarks/gpu_check.sh links an uninstalled
checkout as `varbench`). ``--budget-s`` bounds the whole run: what does not fit
is skipped and said so. ``--device cpu --smoke`` is the CI's check that the
script runs.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from varbench.models.attention import attention, choose_backend
from varbench.models.var import VAR, var_flops
from varbench.workers.config import TrialConfig
from varbench.workers.population import run_population
from varbench.workers.training import train_one

LAYOUTS = {  # VAR-style pyramids (about N tokens): sides
    85: [1, 2, 4, 8],
    340: [1, 2, 4, 8, 16],  # 341
    680: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],  # VAR's 256 px
    1360: [1, 2, 3, 4, 6, 8, 11, 14, 18, 24],  # 1,347
    2240: [1, 2, 3, 4, 6, 9, 13, 18, 24, 32],  # VAR's 512 px
}


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, reps: int) -> float:
    """Mean seconds of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def _ids(sides: list[int], device: str) -> torch.Tensor:
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)]).to(device)


def _attention_step(q, k, v, ids, backend: str) -> None:
    attention(q, k, v, ids, backend).sum().backward()


def _train_step(forward, opt, x, y) -> None:
    loss = (forward(x) - y).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def attention_table(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| tokens | head dim | reference ms | sdpa ms | flex ms | auto | flex vs sdpa | "
            "flex compile s |", "|---|---|---|---|---|---|---|---|"]
    layouts = {85: LAYOUTS[85]} if smoke else LAYOUTS
    widths = (16,) if smoke else (16, 64, 256, 512)
    batch, reps = (2, 1) if smoke else (64, 10)
    backends = ("reference", "sdpa") + (("flex",) if device == "cuda" else ())
    for tokens, sides in layouts.items():
        ids = _ids(sides, device)
        for d in widths:
            if clock.left() < 0:
                rows.append(f"| {tokens} | {d} | skipped: out of time budget | | | | | |")
                continue
            q, k, v = (torch.randn(batch, 1, ids.numel(), d, device=device, requires_grad=True)
                       for _ in range(3))
            ms, compile_s = {}, float("nan")
            for be in backends:
                step = functools.partial(_attention_step, q, k, v, ids, be)
                if be == "flex":
                    t0 = time.perf_counter()
                    step()
                    _sync(device)
                    compile_s = time.perf_counter() - t0
                try:
                    ms[be] = 1000 * timed(step, device, reps)
                except Exception as exc:  # noqa: BLE001 - a row says what failed
                    ms[be] = float("nan")
                    print(f"  {be} at {tokens} tokens, d={d}: {type(exc).__name__}: {exc}"[:200])
            auto = choose_backend(device, d, ids.numel())
            ratio = ms["sdpa"] / ms["flex"] if "flex" in ms else float("nan")
            rows.append(f"| {ids.numel()} | {d} | {ms['reference']:.3f} | {ms['sdpa']:.3f} | "
                        f"{ms.get('flex', float('nan')):.3f} | {auto} | {ratio:.2f}x | "
                        f"{compile_s:.1f} |")
    return rows


def step_times(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| width | eager ms/step | compiled ms/step | compiled vs eager | compile s | "
            "GFLOP/s (eager) |", "|---|---|---|---|---|---|"]
    for w in ((8,) if smoke else (8, 32, 128, 512)):
        if clock.left() < 0:
            rows.append(f"| {w} | skipped: out of time budget | | | | |")
            continue
        cfg = TrialConfig(width=w, device=device)
        torch.manual_seed(0)
        model = VAR(cfg.var_config()).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device == "cuda")
        x = torch.rand(cfg.batch_size, 1, cfg.s_first, cfg.s_first, device=device)
        y = torch.rand(cfg.batch_size, 1, cfg.s_last, cfg.s_last, device=device)

        reps = 2 if smoke else 50
        eager = timed(functools.partial(_train_step, model, opt, x, y), device, reps)
        compiled_step = functools.partial(_train_step, torch.compile(model), opt, x, y)
        t0 = time.perf_counter()
        compiled_step()
        _sync(device)
        compile_s = time.perf_counter() - t0
        fast = timed(compiled_step, device, reps)
        rate = 3 * var_flops(cfg.var_config()) * cfg.batch_size / eager / 1e9
        rows.append(f"| {w} | {1000 * eager:.2f} | {1000 * fast:.2f} | {eager / fast:.2f}x | "
                    f"{compile_s:.1f} | {rate:.1f} |")
    return rows


def populations(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| width | plain loop model-steps/s | R | stacked model-steps/s | ratio |",
            "|---|---|---|---|---|"]
    steps = 3 if smoke else 30
    for w in ((8,) if smoke else (8, 32, 128, 512)):
        base = TrialConfig(width=w, steps=steps, eval_every=10**6, n_eval=64, eps=(1e-9,),
                           device=device)
        train_one(base)  # warm-up
        plain = 1 / train_one(base).sec_per_step
        for r in ((1, 2) if smoke else (1, 8, 32, 64)):
            if clock.left() < 0:
                rows.append(f"| {w} | {plain:.0f} | {r} | skipped: out of time budget | |")
                continue
            cfgs = [replace(base, seed=s) for s in range(r)]
            try:
                res = run_population(cfgs, max_activations=1 << 62)  # stacked at every width
                rate = 1 / res[0].sec_per_step
                rows.append(f"| {w} | {plain:.0f} | {r} | {rate:.0f} | {rate / plain:.1f}x |")
            except torch.OutOfMemoryError:
                rows.append(f"| {w} | {plain:.0f} | {r} | out of memory | |")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu: no CUDA device here (use --device cpu --smoke to check the script)")
    clock = Clock(args.budget_s)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, budget {args.budget_s:.0f} s")
    for title, section in (("1. attention fwd+bwd (1 head, batch 64)", attention_table),
                           ("2. training step, width-d theorem-form VAR (sides 2->8, K=3)",
                            step_times),
                           ("3. population training vs the plain loop", populations)):
        t0 = time.perf_counter()
        print(f"\n{title}")
        print("\n".join(section(args.device, clock, args.smoke)))
        print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - clock.t0:.1f} s")


if __name__ == "__main__":
    main()
