#!/usr/bin/env bash
# GPU checks for a lent GPU machine (issues 5 and 6), meant to finish in under 5 minutes on one H100:
# 1. the CUDA-only tests of test_bilevel_rlhf.py (autocast dtype, GradScaler with fp16, bf16 reference, fp32
#    log-probs under bf16 autocast);
# 2. benchmarks/gpu_check.py: a GPT-2-small-sized policy, generation tokens/s, training pairs/s and peak memory,
#    bf16 against fp32, with and without gradient checkpointing; one JSON summary;
# 3. the embedded task end to end on the GPU (bf16 autocast by default), then the same under torchrun with one
#    process (the NCCL process group; one GPU cannot hold two NCCL ranks).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (the python in .venv, or PY=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results}
RUNS=$(mktemp -d)
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -m pytest -q test_bilevel_rlhf.py -k cuda -rs -p no:cacheprovider
"$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json"
TQDM_DISABLE=1 "$PY" bilevel_rlhf.py --quick --steps 60 --eval-every 30 --output-dir "$RUNS/one"
TQDM_DISABLE=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 bilevel_rlhf.py --quick --steps 20 \
    --design mix --output-dir "$RUNS/torchrun"
echo "gpu_check.sh: all checks passed"
