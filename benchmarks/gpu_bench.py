"""`make bench-gpu`: the GPU engine's figures, every row a ratio measured in one run.

1. attention fwd+bwd per backend (reference / sdpa / flex / auto) at 85 to 2,240
   tokens (VAR's layouts up to 512 px) and head widths 16-512, with what
   ``auto`` chose; flex runs compiled with its BlockMask cached per layout, its
   compile time and graph count printed apart; the flex/SDPA ratio at >= 680
   tokens is checked against issue 11's 2x;
2. the training step of a trial (``train_one``) per width in each step mode
   (eager, compiled, graphs = CUDA graphs), compile time apart;
3. TF32: the same trial, same seed, at matmul precision ``highest`` and ``high``:
   err of both with err's interval, and whether TF32 moved err beyond it;
4. population training: model-steps/s for R = 1, 8, 32, 64 stacked replicas at
   widths 8, 32, 128, 512, against the plain loop;
5. torch.func (``stack_module_state`` + ``vmap`` + ``functional_call`` with a
   stock foreach/fused AdamW) against the hand-written ``PopulationVAR`` +
   ``StackedAdamW`` step, model-steps/s at a few R and widths.

Each section ends with the lines to paste (README, GPU section, says where).
Imports only torch and varbench.models / varbench.workers, so it runs on a GPU
machine that has nothing else (benchmarks/gpu_check.sh links an uninstalled
checkout as `varbench`). ``--budget-s`` bounds the whole run, shared among the
sections (what one leaves unused goes to the next): what does not fit is
skipped and said so. ``--device cpu --smoke`` is the CI's check that the script
runs (tiny shapes, no compilation: tests/test_gpu_engine.py covers that).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from varbench.models.attention import attention, choose_backend
from varbench.models.population import PopulationVAR
from varbench.workers.config import TrialConfig
from varbench.workers.population import StackedAdamW, _clip, population_step, run_population
from varbench.workers.training import build, build_target, lr_factor, train_one

LAYOUTS = {  # VAR-style pyramids (about N tokens): sides; the long ones (issue 11's 2x) first
    680: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],  # VAR's 256 px
    2240: [1, 2, 3, 4, 6, 9, 13, 18, 24, 32],  # VAR's 512 px
    85: [1, 2, 4, 8],
    340: [1, 2, 4, 8, 16],  # 341
    1360: [1, 2, 3, 4, 6, 8, 11, 14, 18, 24],  # 1,347
}
FLEX_TARGET = 2.0  # issue 11: flex fwd+bwd >= 2x SDPA (dense boolean mask) at >= 680 tokens
SHARES = {"attention": 0.35, "step": 0.25, "tf32": 0.1, "population": 0.15, "func": 0.15}


class Clock:
    """The run's time budget, shared among sections: each gets its share of what is
    left when it starts (``section``), so one slow section cannot starve the rest."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s
        self.end = self.t0 + budget_s

    def section(self, share: float, shares_left: float) -> None:
        now = time.perf_counter()
        self.end = now + max(self.t0 + self.budget - now, 0) * share / shares_left

    def left(self) -> float:
        return min(self.end, self.t0 + self.budget) - time.perf_counter()


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


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def attention_table(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| tokens | head dim | reference ms | sdpa ms | flex ms | auto | sdpa/flex | "
            "flex compile s | flex graphs |", "|---|---|---|---|---|---|---|---|---|"]
    layouts = {85: LAYOUTS[85]} if smoke else LAYOUTS
    widths = (16,) if smoke else (64, 16, 256, 512)
    batch, reps = (2, 1) if smoke else (64, 10)
    backends = ("reference", "sdpa") + (("flex",) if device == "cuda" else ())
    paste, verdicts = [], []
    for tokens, sides in layouts.items():
        ids = _ids(sides, device)
        for d in widths:
            if clock.left() < 0:
                rows.append(f"| {tokens} | {d} | skipped: out of time budget | | | | | | |")
                continue
            q, k, v = (torch.randn(batch, 1, ids.numel(), d, device=device, requires_grad=True)
                       for _ in range(3))
            ms, compile_s, graphs = {}, float("nan"), 0
            for be in backends:
                step = functools.partial(_attention_step, q, k, v, ids, be)
                try:
                    if be == "flex":  # the first call builds the BlockMask and compiles
                        g0, t0 = _graphs_compiled(), time.perf_counter()
                        step()
                        _sync(device)
                        compile_s = time.perf_counter() - t0
                        ms[be] = 1000 * timed(step, device, reps)
                        graphs = _graphs_compiled() - g0  # 0: reused this layout's graph
                    else:
                        ms[be] = 1000 * timed(step, device, reps)
                except Exception as exc:  # noqa: BLE001 - a row says what failed
                    ms[be] = float("nan")
                    print(f"  {be} at {tokens} tokens, d={d}: {type(exc).__name__}: {exc}"[:200])
            auto = choose_backend(device, d, ids.numel())
            ratio = ms["sdpa"] / ms["flex"] if "flex" in ms else float("nan")
            rows.append(f"| {ids.numel()} | {d} | {ms['reference']:.3f} | {ms['sdpa']:.3f} | "
                        f"{ms.get('flex', float('nan')):.3f} | {auto} | {ratio:.2f}x | "
                        f"{compile_s:.1f} | {graphs if 'flex' in ms else ''} |")
            figures = {b: round(t, 3) for b, t in ms.items() if math.isfinite(t)}
            paste.append(f'    Measured("{device}", {ids.numel()}, {d}, {figures}, '
                         f'"make bench-gpu, {_device_name(device)}, torch {torch.__version__}"),')
            if tokens >= 680 and "flex" in ms:
                met = "met" if ratio >= FLEX_TARGET else "NOT met"
                verdicts.append(f"flex vs sdpa fwd+bwd at {ids.numel()} tokens, d={d}: "
                                f"{ratio:.2f}x (target >= {FLEX_TARGET:g}x: {met})")
    if "flex" not in backends:
        rows.append(f"flex fwd+bwd: not measured on {device} (torch {torch.__version__} has no "
                    "flex backward there); the flex >= 2x SDPA check at 680 and 2,240 tokens "
                    "needs CUDA")
    rows += verdicts
    rows += ["paste into MEASURED (models/attention.py):"] + paste
    return rows


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def _bench_config(device: str, width: int, steps: int, **kw) -> TrialConfig:
    """issue 11's trial: theorem form, mlp L=2, sides 2->8, K=3; no early stop."""
    return TrialConfig(width=width, lipschitz=2.0, steps=steps, eval_every=10**6, n_eval=256,
                       eps=(1e-9,), device=device, **kw)


def step_times(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| width | mode | ms/step | vs eager | compile s |", "|---|---|---|---|---|"]
    # graphs before compiled: issue 11's <= 1 ms/step target needs the launches gone
    modes = ("eager",) if smoke else ("eager",) + (("graphs",) if device == "cuda" else ()) + (
        "compiled",)
    steps = 3 if smoke else 200
    paste = []
    for w in ((8,) if smoke else (32, 8, 128, 512)):
        ms, compile_s = {}, {}
        for mode in modes:
            if clock.left() < 0:
                rows.append(f"| {w} | {mode} | skipped: out of time budget | | |")
                continue
            try:
                res = train_one(_bench_config(device, w, steps, step_mode=mode))
            except Exception as exc:  # noqa: BLE001 - a row says what failed
                rows.append(f"| {w} | {mode} | failed: {type(exc).__name__}: {exc} |"[:200])
                continue
            ms[mode], compile_s[mode] = 1000 * res.sec_per_step, res.compile_seconds
            rows.append(f"| {w} | {res.step_mode} | {ms[mode]:.3f} | "
                        f"{ms['eager'] / ms[mode] if 'eager' in ms else float('nan'):.2f}x | "
                        f"{compile_s[mode]:.1f} |")
        if ms:
            paste.append(f'    StepMeasured("{device}", {w}, '
                         f'{ {m: round(t, 3) for m, t in ms.items()} }, '
                         f'{ {m: round(t, 1) for m, t in compile_s.items()} }, '
                         f'"make bench-gpu, {_device_name(device)}, torch {torch.__version__}"),')
    if smoke:
        rows.append("compiled / graphs: not measured in --smoke (compiling takes tens of "
                    "seconds on a CPU; tests/test_gpu_engine.py checks compiled == eager)")
    rows.append("issue 11's target: <= 1 ms/step for a width-32 trial on an H100/H200")
    return rows + ["paste into STEP_MEASURED (workers/engine.py):"] + paste


def tf32_error(device: str, clock: Clock, smoke: bool) -> list[str]:
    """Same trial, same seed, at both precisions: does TF32 move err beyond its interval?"""
    rows = ["| matmul precision | err | err_ucb | ms/step |", "|---|---|---|---|"]
    if clock.left() < 0:
        return rows + ["skipped: out of time budget"]
    base = _bench_config(device, 8 if smoke else 32, 5 if smoke else 2000)
    base = replace(base, n_eval=64 if smoke else 4096)
    res = {}
    for precision in ("highest", "high"):
        r = train_one(replace(base, matmul_precision=precision))
        res[precision] = r
        rows.append(f"| {r.matmul_precision} | {r.err:.5f} | {r.err_ucb:.5f} | "
                    f"{1000 * r.sec_per_step:.3f} |")
    ref, tf = res["highest"], res["high"]
    half = ref.err_ucb - ref.err  # err's one-sided 95% interval at highest precision
    moved = abs(tf.err - ref.err)
    ok = moved <= half
    rows.append(f"|err(high) - err(highest)| = {moved:.2e}, err's interval (err_ucb - err) = "
                f"{half:.2e}: TF32 {'within' if ok else 'BEYOND'} the interval"
                + ("" if device == "cuda" else f" (on {device} 'high' changes nothing)"))
    if device == "cuda":
        rows.append("decision: " + ("set TrialConfig.matmul_precision = \"high\" "
                                    "(workers/config.py)" if ok else
                                    "keep TrialConfig.matmul_precision = \"highest\""))
    return rows


def populations(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| width | plain loop model-steps/s | R | stacked model-steps/s | ratio |",
            "|---|---|---|---|---|"]
    steps = 3 if smoke else 30
    for w in ((8,) if smoke else (8, 32, 128, 512)):
        if clock.left() < 0:
            rows.append(f"| {w} | skipped: out of time budget | | | |")
            continue
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


class FuncPopulation:
    """R VARs trained the torch.func way: ``stack_module_state`` stacks their weights,
    ``vmap(grad(functional_call))`` gives each replica its gradient, a stock AdamW
    (fused on CUDA, foreach elsewhere) updates the stacked tensors. One learning
    rate for all (the stock optimizer has one per tensor); every replica active.
    The comparison for ``PopulationVAR`` + ``StackedAdamW`` (``StackedStep``)."""

    def __init__(self, cfgs: list[TrialConfig], device: torch.device):
        c0 = cfgs[0]
        models = [build(c, device) for c in cfgs]
        self.params, self.buffers = torch.func.stack_module_state(models)
        self.base, self.cfg = models[0], c0  # its own weights are never read

        def loss(p, b, x, y):
            return F.mse_loss(torch.func.functional_call(self.base, (p, b), (x,)), y)

        self.grad = torch.func.vmap(torch.func.grad_and_value(loss))
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=c0.lr,
                                     weight_decay=c0.weight_decay, fused=cuda or None,
                                     foreach=None if cuda else True)

    def step(self, x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        grads, losses = self.grad(self.params, self.buffers, x, y)
        if self.cfg.grad_clip > 0:
            grads = _clip(grads, self.cfg.grad_clip)
        for k, p in self.params.items():
            p.grad = grads[k]
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * factor
        self.opt.step()
        return losses.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Every replica's outputs on its own inputs, x (R, B, c, s1, s1)."""
        with torch.no_grad():
            return torch.func.vmap(lambda p, b, z: torch.func.functional_call(
                self.base, (p, b), (z,)))(self.params, self.buffers, x)


class StackedStep:
    """The project's population step (``PopulationVAR`` + ``StackedAdamW``), every
    replica active, for the same loop as ``FuncPopulation``."""

    def __init__(self, cfgs: list[TrialConfig], device: torch.device):
        self.pop = PopulationVAR([build(c, device) for c in cfgs]).to(device)
        self.cfg, r = cfgs[0], len(cfgs)
        self.opt = StackedAdamW(dict(self.pop.named_parameters()),
                                torch.tensor([c.lr for c in cfgs], device=device),
                                self.cfg.weight_decay)
        self.active = torch.ones(r, dtype=torch.bool, device=device)
        self.factor = torch.zeros((), device=device)

    def step(self, x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        self.factor.fill_(factor)
        return population_step(self.pop, self.opt, x, y, self.active, self.factor,
                               self.cfg.grad_clip, True)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.pop(x)


def population_batches(cfgs: list[TrialConfig], device: torch.device, steps: int):
    """The same (x, y) stream for both population steps: (R, B, c, s, s) pairs."""
    c0, r = cfgs[0], len(cfgs)
    target = build_target(c0, device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(r, c0.batch_size, c0.channels, c0.s_first, c0.s_first, generator=gen)
        x = x.to(device)
        yield x, target(x.flatten(0, 1)).unflatten(0, (r, c0.batch_size))


def func_vs_stacked(device: str, clock: Clock, smoke: bool) -> list[str]:
    rows = ["| width | R | stacked model-steps/s | torch.func model-steps/s | func/stacked |",
            "|---|---|---|---|---|"]
    steps = 3 if smoke else 30
    dev = torch.device(device)
    notes = set()
    for w in ((8,) if smoke else (8, 32, 128)):
        for r in ((2,) if smoke else (8, 32)):
            if clock.left() < 0:
                rows.append(f"| {w} | {r} | skipped: out of time budget | | |")
                continue
            cfgs = [TrialConfig(width=w, seed=s, device=device) for s in range(r)]
            rate = {}
            for name, cls in (("stacked", StackedStep), ("func", FuncPopulation)):
                trainer = cls(cfgs, dev)
                batches = list(population_batches(cfgs, dev, steps + 1))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    trainer.step(*batches[0], 1.0)  # warm-up
                    _sync(device)
                    t0 = time.perf_counter()
                    for i, (x, y) in enumerate(batches[1:]):
                        trainer.step(x, y, lr_factor(i, cfgs[0].warmup, cfgs[0].steps))
                    _sync(device)
                rate[name] = r * steps / (time.perf_counter() - t0)
                notes |= {f"note ({name}): {str(c.message).split('(Triggered')[0].strip()}"
                          for c in caught if "batching rule" in str(c.message)}
            rows.append(f"| {w} | {r} | {rate['stacked']:.0f} | {rate['func']:.0f} | "
                        f"{rate['func'] / rate['stacked']:.2f}x |")
    rows += sorted(notes)
    rows.append("decision (STYLE.md): prefer torch.func where func/stacked >= 1 on the GPU")
    return rows


SECTIONS = (
    ("attention", "1. attention fwd+bwd (1 head, batch 64)", attention_table),
    ("step", "2. training step of a trial (train_one), width-d theorem-form VAR "
             "(sides 2->8, K=3), per step mode", step_times),
    ("tf32", "3. TF32: err at matmul precision highest vs high (width 32, same seed)",
     tf32_error),
    ("population", "4. population training vs the plain loop", populations),
    ("func", "5. torch.func (vmap + functional_call + stock AdamW) vs PopulationVAR + "
             "StackedAdamW", func_vs_stacked),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu: no CUDA device here (use --device cpu --smoke to check the script)")
    clock = Clock(args.budget_s)
    print(f"device: {_device_name(args.device)}, torch {torch.__version__}, "
          f"budget {args.budget_s:.0f} s")
    shares_left = sum(SHARES.values())
    for key, title, section in SECTIONS:
        clock.section(SHARES[key], shares_left)
        shares_left -= SHARES[key]
        t0 = time.perf_counter()
        print(f"\n{title}")
        print("\n".join(section(args.device, clock, args.smoke)), flush=True)
        print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - clock.t0:.1f} s")


if __name__ == "__main__":
    main()
