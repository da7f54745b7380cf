#!/usr/bin/env bash
# GPU checks for a lent GPU machine (issue 5), meant to finish in under 5 minutes on one H100:
# 1. the CUDA-only tests of test_bilevel_rlhf.py (autocast dtype, GradScaler with fp16, bf16 reference);
# 2. benchmarks/gpu_check.py: a GPT-2-small-sized policy, generation tokens/s, training pairs/s and peak memory,
#    bf16 against fp32, with and without gradient checkpointing; one JSON summary.
# Usage: bash benchmarks/gpu_check.sh [OUT_JSON]   (the python in .venv, or PY=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/gpu_check.json}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -m pytest -q test_bilevel_rlhf.py -k cuda -rs
"$PY" benchmarks/gpu_check.py --out "$OUT"
