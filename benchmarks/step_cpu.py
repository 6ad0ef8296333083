"""Seconds per training step of whole quick-sized trials on one CPU thread, per step recipe.

Each variant trains the same trials (``train_one``: quick.yaml's cells'
shapes, 300 steps), alternated round by round so the machine's drift falls on
every variant alike; the median per (width, K, variant) and the ratio to the
first variant are printed. Variants:

- ``sdpa, loop AdamW``: the fused CPU attention kernel, the model under
  autograd and ``torch.optim``'s per-parameter AdamW loop (the first CPU recipe);
- ``auto, autograd``: the attention ``auto`` picks (``models/attention.py``),
  the model under autograd, ``torch.optim.AdamW(fused=True)`` (what a trial
  ran before 2026-11-28's fifth session);
- ``auto, by hand``: the theorem-form model's loss and gradients by
  ``models.fused.VARLoss``, still ``torch.optim.AdamW(fused=True)``;
- ``by hand, direct AdamW``: what a trial runs now: also the fused AdamW kernel
  called directly (``workers.optim.FusedAdamW``), and with it the gradient
  clipping written out (``workers.optim.clip_grad_norm_``; the other variants
  keep ``torch.nn.utils.clip_grad_norm_``).

    .venv/bin/python -m benchmarks.step_cpu [--rounds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import contextmanager

import torch

from varbench.models import fused as fused_mod
from varbench.workers import training
from varbench.workers.config import TrialConfig

SHAPES = ((4, 2), (6, 2), (8, 3), (11, 2), (16, 3), (23, 2), (32, 3))  # (width, K)
# (name, attention backend, AdamW: "loop" | "optim" (torch.optim, fused) | "direct", by hand)
VARIANTS = (("sdpa, loop AdamW", "sdpa", "loop", False), ("auto, autograd", "auto", "optim", False),
            ("auto, by hand", "auto", "optim", True),
            ("by hand, direct AdamW", "auto", "direct", True))


@contextmanager
def adamw(kind: str):
    """Which AdamW ``train_one`` builds (``workers.training.optimizer``)."""
    real = training.optimizer

    def make(model, lr, weight_decay, *, eager_cpu, fused):
        if kind == "direct":
            return real(model, lr, weight_decay, eager_cpu=eager_cpu, fused=fused)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                 fused=kind == "optim")

    training.optimizer = make
    try:
        yield
    finally:
        training.optimizer = real


@contextmanager
def by_hand(on: bool):
    """Turn ``models.fused`` off (``on=False``): the model's forward under autograd."""
    real = fused_mod.fuses
    if not on:
        fused_mod.fuses = lambda *args: False
    try:
        yield
    finally:
        fused_mod.fuses = real


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for w, k in SHAPES:
            for name, backend, opt, hand in VARIANTS:
                cfg = TrialConfig(target="mlp", lipschitz=2.0, width=w, scales=k,
                                  interp="bicubic", steps=args.steps, eval_every=50, lr=0.02,
                                  warmup=30, n_eval=1024, eps=(1e-3,), backend=backend)
                with adamw(opt), by_hand(hand):
                    res = training.train_one(cfg)
                times.setdefault((w, k, name), []).append(res.sec_per_step * 1e3)
    print(f"torch {torch.__version__}, one thread, {args.steps} steps, median of {args.rounds}")
    print("| width | K | " + " | ".join(v[0] for v in VARIANTS)
          + " | first / last | autograd / last |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 2))
    for w, k in SHAPES:
        ms = [statistics.median(times[(w, k, v[0])]) for v in VARIANTS]
        print(f"| {w} | {k} | " + " | ".join(f"{m:.2f} ms" for m in ms)
              + f" | {ms[0] / ms[-1]:.2f}x | {ms[1] / ms[-1]:.2f}x |")


if __name__ == "__main__":
    main()
