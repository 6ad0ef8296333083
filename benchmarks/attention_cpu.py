"""Attention backends on CPU at the model's own shapes: the figures ``auto`` decides from.

A depth-1 VAR computes the queries of the last scale only (s_last² of them),
and under VAR's block-causal mask those see every key, so the model calls
attention unmasked (``full=True``). This times forward + backward of
``sdpa`` and ``bmm`` there (batch 64, one head, one thread, as a CPU worker
runs), and, for models deeper than one block, the masked pass over every
token. The first kind of row is what ``MEASURED`` in ``models/attention.py``
holds for CPU.

    .venv/bin/python -m benchmarks.attention_cpu [--heads 4 8 12 16 32] [--sides 2,8 2,4,8]
"""

from __future__ import annotations

import argparse
import time

import torch

from varbench.models.attention import attention, block_causal_mask


def fwd_bwd_ms(backend: str, q, k, v, ids, mask, full: bool, reps: int) -> float:
    for _ in range(3):
        attention(q, k, v, ids, backend, mask, full=full).sum().backward()
    t0 = time.perf_counter()
    for _ in range(reps):
        attention(q, k, v, ids, backend, mask, full=full).sum().backward()
    return (time.perf_counter() - t0) / reps * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs="+", default=[4, 8, 12, 16, 32, 64])
    ap.add_argument("--sides", nargs="+", default=["2,8", "2,4,8", "2,4,6,8", "2,4,8,16"])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, batch {args.batch}, fwd+bwd ms")
    print("| tokens | head dim | last scale: sdpa | bmm | bmm/sdpa | all tokens, masked: sdpa | bmm | bmm/sdpa |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.sides:
        sides = [int(s) for s in text.split(",")]
        ids = torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)])
        t, last = ids.numel(), sides[-1] ** 2
        mask = block_causal_mask(ids)
        reps = max(3, int(4000 / t))
        for d in args.heads:
            cells = []
            for tq, full in ((last, True), (t, False)):
                q = torch.randn(args.batch, 1, tq, d, requires_grad=True)
                k, v = (torch.randn(args.batch, 1, t, d, requires_grad=True) for _ in range(2))
                a = fwd_bwd_ms("sdpa", q, k, v, ids, mask, full, reps)
                b = fwd_bwd_ms("bmm", q, k, v, ids, mask, full, reps)
                cells += [f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}"]
            print(f"| {t} | {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
