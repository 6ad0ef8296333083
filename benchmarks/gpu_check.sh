#!/usr/bin/env bash
# `make bench-gpu`: the GPU checks and figures, on a machine with an NVIDIA GPU
# (e.g. through the workplace's device tool):
#   bash benchmarks/gpu_check.sh
# 1. the CUDA tests (-m cuda): every backend, padded heads included, against
#    the reference forward and backward; a trial at widths 4, 8, 16, 64 with auto;
#    the compiled and CUDA-graph steps against eager (one model, a population);
# 2. benchmarks/gpu_bench.py: attention table with the flex/sdpa verdict at 680
#    and 2,240 tokens, step time per step mode (compile time apart), TF32 err
#    against err's interval, population model-steps/s, torch.func vs
#    StackedAdamW; bounded by BUDGET_S seconds (default 330), shared among the
#    sections. Every section ends with the lines to paste (README, GPU section).
# The bench runs even if a test fails (one GPU run must bring back every
# figure); the script then exits with the tests' status.
# Planned to finish in under 10 minutes on one H100. CI never runs it (no GPU).
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
start=$SECONDS
rc=0
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_attention.py tests/test_gpu_engine.py \
  || rc=$?
echo "== cuda tests: exit $rc, $((SECONDS - start)) s"
"$PY" -m benchmarks.gpu_bench --budget-s "${BUDGET_S:-330}" || rc=$((rc ? rc : $?))
echo "== bench-gpu: $((SECONDS - start)) s in all"
exit "$rc"
