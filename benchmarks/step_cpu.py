"""Seconds per training step of whole quick-sized trials on one CPU thread, per step recipe.

Each variant trains the same trials (``train_one``: quick.yaml's cells'
shapes, 300 steps), alternated round by round so the machine's drift falls on
every variant alike; the median per (width, K, variant) and the ratio to the
first variant are printed. Variants:

- ``sdpa, loop AdamW``: the fused CPU attention kernel and PyTorch's
  per-parameter AdamW loop (what the CPU ran before ``fused`` AdamW);
- ``sdpa, fused AdamW``;
- ``auto, fused AdamW``: what a trial runs now (``auto`` picks ``bmm`` for
  heads up to 12 at these shapes, ``models/attention.py``).

    .venv/bin/python -m benchmarks.step_cpu [--rounds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import contextmanager

import torch

from varbench.workers import training
from varbench.workers.config import TrialConfig

SHAPES = ((4, 2), (8, 3), (12, 3), (16, 2), (32, 3))  # (width, K)
VARIANTS = (("sdpa, loop AdamW", "sdpa", False), ("sdpa, fused AdamW", "sdpa", True),
            ("auto, fused AdamW", "auto", True))


@contextmanager
def adamw_fused(on: bool):
    """Force AdamW's ``fused`` flag inside ``train_one`` (the 'before' recipe)."""
    real = torch.optim.AdamW

    def make(params, **kw):
        kw["fused"] = on
        return real(params, **kw)

    torch.optim.AdamW = make
    try:
        yield
    finally:
        torch.optim.AdamW = real


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for w, k in SHAPES:
            for name, backend, fused in VARIANTS:
                cfg = TrialConfig(target="mlp", lipschitz=2.0, width=w, scales=k,
                                  interp="bicubic", steps=args.steps, eval_every=50, lr=0.02,
                                  warmup=30, n_eval=1024, eps=(1e-3,), backend=backend)
                with adamw_fused(fused):
                    res = training.train_one(cfg)
                times.setdefault((w, k, name), []).append(res.sec_per_step * 1e3)
    print(f"torch {torch.__version__}, one thread, {args.steps} steps, median of {args.rounds}")
    print("| width | K | " + " | ".join(n for n, _, _ in VARIANTS) + " | last / first |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 1))
    for w, k in SHAPES:
        ms = [statistics.median(times[(w, k, n)]) for n, _, _ in VARIANTS]
        print(f"| {w} | {k} | " + " | ".join(f"{m:.2f} ms" for m in ms)
              + f" | {ms[-1] / ms[0]:.2f} |")


if __name__ == "__main__":
    main()
