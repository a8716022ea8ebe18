#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md, as one script for a machine with a CUDA GPU.
# Prepare here:  bash bench/wheelhouse.sh
#                mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/* data/fashion-mnist/
# Then, on the GPU machine, in a copy of this tree with .wheels/ and data/fashion-mnist/:  bash bench/gpu.sh
# Results (logs and JSON) are written under $OUT. Should take about 4 minutes on an H100 for the
# performance figures (not run yet), plus the quality step at the end (3 runs of 10 epochs, each evaluated).
set -uo pipefail
OUT=${OUT:-/tmp/deepcluster-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PREFECT_SERVER_ANALYTICS_ENABLED=false
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

step "install Prefect from the carried wheels"
python3 -m pip install --quiet --no-index --find-links .wheels prefect || exit 1

step "k-means at the paper's scale: 1,281,167 x 256, k = 10,000, 20 iterations"
python3 -m deepcluster.cli bench-kmeans --n 1281167 --dim 256 --k 10000 --iters 20 --device cuda \
    --sklearn-init none --no-faiss --json "$OUT/kmeans-paper-h100.json"

step "full Fashion-MNIST epoch, default model, batch 1024 (lr scaled), flow vs library"
python3 -m deepcluster.cli bench --dataset fashion-mnist --device cuda --k 100 --batch-size 1024 \
    --epochs 4 --rounds 1 --json "$OUT/bench-fmnist-b1024.json"

step "the same without deterministic algorithms (cuDNN may pick faster kernels)"
echo '{"deterministic": false}' > "$OUT/nondeterministic.json"
python3 -m deepcluster.cli bench --dataset fashion-mnist --device cuda --k 100 --batch-size 1024 \
    --config "$OUT/nondeterministic.json" --epochs 4 --rounds 1 --json "$OUT/bench-fmnist-b1024-nondet.json"

step "the same at the default batch of 256"
python3 -m deepcluster.cli bench --dataset fashion-mnist --device cuda --k 100 \
    --epochs 3 --rounds 1 --json "$OUT/bench-fmnist-b256.json"
step "quality: the Fashion-MNIST suite's default configuration, seeds 0-2 (the section of docs/RESULTS.md)"
python3 -m deepcluster.cli --runs-dir /tmp/quality-runs bench-quality --suite fashion-mnist --configs default \
    --seeds 0,1,2 --out "$OUT/RESULTS.md" --json "$OUT/quality-fashion-mnist.json"
step "done"
