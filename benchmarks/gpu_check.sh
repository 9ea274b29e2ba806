#!/usr/bin/env bash
# The device call for issue 29: the image's python3 (its own jax/flax/optax) runs gpu_check.py
# from the repo root, unbuffered, and its log lands in $OUT beside the table and the JSON.
#   run: bash benchmarks/gpu_check.sh   (timeout_s 420; extra arguments go to gpu_check.py)
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-benchmarks/results/gpu_check}"
log="$out/gpu_check.log"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$log"
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee -a "$log"
