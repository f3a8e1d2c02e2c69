#!/usr/bin/env bash
# The GPU image benchmark in one call: MNIST flow matching with the UNet, flowforge's Trainer against a
# plain PyTorch loop in the modes fp32, bf16+compile and flowforge's CUDA defaults (images/s, ratio, FD).
# Needs only torch; installs nothing. MNIST's four .gz files in $MNIST_DIR (for the device machine, copy
# them into the ignored benchmarks/.cache/mnist and carry that folder). Logs, JSON and sample grids go to $OUT.
#   MNIST_DIR=benchmarks/.cache/mnist OUT=/tmp/out bash benchmarks/gpu_images.sh
# Six runs (3 modes x 2 loops), four of them compiling: untested on a GPU so far; if TIMEOUT cuts it short,
# gpu_images.json keeps the finished runs (each printed line gives its "run" seconds for planning).
#   STEPS=1500 BATCH=256 NET=standin EXTRA="--modes fp32,defaults" bash benchmarks/gpu_images.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_images}"
MNIST_DIR="${MNIST_DIR:-benchmarks/.cache/mnist}"
[ -d "$MNIST_DIR" ] || MNIST_DIR=../shared/data/mnist
mkdir -p "$OUT"
LOG="$OUT/gpu_images.log"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$LOG"
# shellcheck disable=SC2086  # EXTRA holds several words on purpose
timeout "${TIMEOUT:-540}" python3 benchmarks/gpu_images.py --data-dir "$MNIST_DIR" --net "${NET:-unet}" \
  --steps "${STEPS:-800}" --batch "${BATCH:-256}" --fd-samples "${FD_SAMPLES:-2000}" \
  --json "$OUT/gpu_images.json" --grids "$OUT" ${EXTRA:-} 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_images.py stopped at the ${TIMEOUT:-540} s limit; $OUT/gpu_images.json holds the runs that finished" | tee -a "$LOG"
exit "$rc"
