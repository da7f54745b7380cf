#!/usr/bin/env bash
# GPU checks for a GPU machine, meant to finish in about 8 minutes on one H100 (an estimate: the generation and
# memory parts have not run on a GPU yet):
# 1. the CUDA-only tests of test_bilevel_rlhf.py (autocast dtype, GradScaler with fp16, bf16 reference, fp32
#    log-probs under bf16 autocast, fused AdamW, the static KV cache compiled once and decoding as the dynamic one);
# 2. benchmarks/gpu_check.py on a GPT-2-small-sized policy, one JSON summary: generation with the static KV cache
#    (compiled, CUDA graphs) against the dynamic one; training pairs/s and peak memory against the peak before
#    logits_to_keep; bilevel_rlhf.train against TRL's OnlineDPOTrainer (default, and checkpointing off);
#    and SAIL-PR steps with LoRA r = 64 on a ~8B Llama built from a config, peak GPU memory;
# 3. the embedded task end to end on the GPU (bf16 autocast by default), then the same under torchrun with one
#    process (the NCCL process group; one GPU cannot hold two NCCL ranks), with DDP and with --fsdp.
#
# Part 2 needs trl and datasets, which the GPU machine lacks and cannot download (torch, transformers, accelerate,
# peft, pyarrow, pandas, xxhash and huggingface_hub are there). Carry them as wheels: once, on this machine, in the
# repository's root (pure-Python wheels, the versions `make bench` uses):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# then run this script there with .whl carried along; it installs them into /tmp/site and downloads nothing. Without
# .whl the TRL runs fail and are reported as errors in the JSON; everything else still runs.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (the python in .venv if there is one, else python3, or PY=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
OUT=${1:-benchmarks/results}
RUNS=$(mktemp -d)
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -m pytest -q test_bilevel_rlhf.py -k cuda -rs -p no:cacheprovider
"$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json"
TQDM_DISABLE=1 "$PY" bilevel_rlhf.py --quick --steps 60 --eval-every 30 --output-dir "$RUNS/one"
TQDM_DISABLE=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 bilevel_rlhf.py --quick --steps 20 \
    --design mix --output-dir "$RUNS/torchrun"
TQDM_DISABLE=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 bilevel_rlhf.py --quick --steps 20 \
    --design mix --fsdp --output-dir "$RUNS/fsdp"  # FSDP2 over NCCL, bf16 parameters in the forward
echo "gpu_check.sh: all checks passed"
