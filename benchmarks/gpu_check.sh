#!/usr/bin/env bash
# GPU check for the attention core, run on a machine with an NVIDIA GPU
# (e.g. through the workplace's device tool):
#   bash benchmarks/gpu_check.sh
# 1. the backend equality tests on CUDA (forward and backward vs reference);
# 2. flex vs sdpa vs reference timings (forward + backward, block-causal VAR
#    mask) for sequence lengths 85..680 and widths 64..512.
# Finishes in well under 5 minutes on an H100. CI never runs it (no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  # an uninstalled checkout (a GPU machine with only torch): expose the
  # repository as the `varbench` namespace, as the installed package does
  PY=python3
  shim=$(mktemp -d)
  ln -s "$PWD" "$shim/varbench"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
"$PY" -m pytest -q -p no:cacheprovider tests/test_attention.py -k cuda
"$PY" - <<'PY'
import time
import torch
from varbench.models.attention import attention

def ids_for(sides):
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)]).cuda()

# VAR-like pyramids from 85 tokens (1,2,4,8) to 680 (VAR's 1,2,3,4,5,6,8,10,13,16)
layouts = [[1, 2, 4, 8], [1, 2, 3, 4, 6, 8, 10], [1, 2, 3, 4, 6, 8, 12, 13], [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]]
print("| tokens | width | reference ms | sdpa ms | flex ms |")
print("|---|---|---|---|---|")
for sides in layouts:
    ids = ids_for(sides)
    t = ids.numel()
    for d in (64, 128, 256, 512):
        q, k, v = (torch.randn(64, 1, t, d, device="cuda", requires_grad=True) for _ in range(3))
        row = []
        for be in ("reference", "sdpa", "flex"):
            for _ in range(3):
                attention(q, k, v, ids, be).sum().backward()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                attention(q, k, v, ids, be).sum().backward()
            torch.cuda.synchronize()
            row.append((time.perf_counter() - t0) / 20 * 1000)
        print(f"| {t} | {d} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
PY
