#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md, on a machine with an NVIDIA GPU (CUDA) and the normal install:
#   make bench-gpu                   # builds .venv/ if needed, installs Debian's Fashion-MNIST where missing
#   PYTHON=/path/to/python bash bench/gpu.sh   # with any environment that has the project installed
# Fashion-MNIST's IDX files must be in data/fashion-mnist/ or /usr/share/datasets/fashion-mnist/.
# Logs and JSON results are written under $OUT (default /tmp/deepcluster-gpu). The performance steps take a
# few minutes on an H100; the quality step at the end trains 3 runs of 10 epochs on the full Fashion-MNIST.
set -uo pipefail
OUT=${OUT:-/tmp/deepcluster-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
deepcluster() { "$PYTHON" -m deepcluster "$@"; }
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1

step "k-means at the paper's scale: 1,281,167 x 256, k = 10,000, 20 iterations"
deepcluster bench-kmeans --n 1281167 --dim 256 --k 10000 --iters 20 --device cuda \
    --sklearn-init none --no-faiss --json-out "$OUT/kmeans-paper.json"

step "full Fashion-MNIST epoch, default model, batch 1024 (lr scaled), flow vs library"
deepcluster bench --dataset fashion-mnist --device cuda --k 100 --batch-size 1024 \
    --epochs 4 --rounds 1 --json-out "$OUT/bench-fmnist-b1024.json"

step "the same without deterministic algorithms (cuDNN may pick faster kernels)"
echo '{"deterministic": false}' > "$OUT/nondeterministic.json"
deepcluster bench --dataset fashion-mnist --device cuda --k 100 --batch-size 1024 \
    --config "$OUT/nondeterministic.json" --epochs 4 --rounds 1 --json-out "$OUT/bench-fmnist-b1024-nondet.json"

step "the same at the paper's batch of 256"
deepcluster bench --dataset fashion-mnist --device cuda --k 100 --batch-size 256 \
    --epochs 3 --rounds 1 --json-out "$OUT/bench-fmnist-b256.json"
step "quality: the Fashion-MNIST suite's default configuration, seeds 0-2 (the section of docs/RESULTS.md)"
deepcluster --runs-dir /tmp/quality-runs bench-quality --suite fashion-mnist --configs default \
    --seeds 0,1,2 --out "$OUT/RESULTS.md" --json-out "$OUT/quality-fashion-mnist.json"
step "done"
