#!/usr/bin/env bash
# The normalizing-flow GPU checks in one call (results: benchmarks/RESULTS-jacobi.md): Jacobi vs sequential TARFlow sampling
# on a 64-token model, and TARFlow on MNIST for a fixed step budget (test bpd, images/s).
# Needs only torch (+ scikit-learn for the digits-trained Jacobi model); MNIST files in $MNIST_DIR.
#   MNIST_DIR=benchmarks/.cache/mnist OUT=/tmp/out bash benchmarks/gpu_nf.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_nf}"
MNIST_DIR="${MNIST_DIR:-benchmarks/.cache/mnist}"
MNIST_STEPS="${MNIST_STEPS:-4000}"
mkdir -p "$OUT"
nvidia-smi -L 2>&1 | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
for w in 64 256; do
  timeout 150 python3 benchmarks/jacobi.py --device cuda --batch 1,8,256 --width "$w" --repeat 5 \
    --chunks 64 --tols 1e-6,1e-9 --json "$OUT/jacobi-w$w.json" 2>&1 | tee "$OUT/jacobi-w$w.log"
done
timeout "${MNIST_TIMEOUT:-300}" python3 benchmarks/tarflow_mnist.py --data-dir "$MNIST_DIR" \
  --steps "$MNIST_STEPS" --device cuda --set "width=256 batch_size=256" --json "$OUT/mnist.json" \
  2>&1 | tee "$OUT/mnist.log"
echo "== summary"
for w in 64 256; do grep -E "^\| [0-9]" "$OUT/jacobi-w$w.log" | sed "s/^/w$w /"; done
cat "$OUT/mnist.json" 2>/dev/null || echo "mnist: no result (see mnist.log)"
