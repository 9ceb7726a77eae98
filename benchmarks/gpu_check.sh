#!/usr/bin/env bash
# GPU check: the smoke suite on CUDA against the CPU run (tests/test_gpu.py, marked cuda), then one
# epoch of paper_cifar10's recipe on a small subset with and without the GPU options (gpu_check.py).
# Prints what it measured. Usage: benchmarks/gpu_check.sh [--examples N]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch; nothing to check"; exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export STF_EVAL_CACHE="${STF_EVAL_CACHE:-$(mktemp -d)/cache}"
start=$(date +%s)
python -m pytest tests/test_gpu.py -m cuda -q -p no:cacheprovider
echo "smoke cpu + cuda, compared: $(( $(date +%s) - start )) s"
python benchmarks/gpu_check.py "$@"
