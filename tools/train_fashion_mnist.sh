#!/usr/bin/env bash
# Trains the `cifar` preset on Fashion-MNIST with its default recipe (20 epochs)
# on one device and evaluates the best and the last checkpoints on the test set,
# centre view and ten patches: the accuracy check of BENCHMARKS.md ("Training on
# Fashion-MNIST"), on the CPU or, from a prebuilt bundle, on a GPU.
#
#   bash tools/train_fashion_mnist.sh [ALEXNET_BIN] [RAW_DIR]
#
# ALEXNET_BIN defaults to target/release/alexnet; RAW_DIR (the four IDX .gz
# files) to /usr/share/datasets/fashion-mnist (tools/fetch_fashion_mnist.sh
# installs them). DEVICE (default cpu, e.g. cuda:0), SEED (default 1), OUT
# (default a temporary folder) and EXTRA (more `train` arguments, e.g.
# "--max-steps 20" for a smoke test) adjust the run. On a GPU machine, source
# tools/gpu_env.sh first so that the binary finds the CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

alexnet=${1:-target/release/alexnet}
raw=${2:-/usr/share/datasets/fashion-mnist}
device=${DEVICE:-cpu}
seed=${SEED:-1}
out=${OUT:-$(mktemp -d)}

if [[ ! -x "$alexnet" ]]; then
  echo "error: $alexnet not found (cargo build --release -p alexnet-cli, or tools/build_gpu_bundle.sh)" >&2
  exit 2
fi
if [[ ! -f "$raw/train-images-idx3-ubyte.gz" ]]; then
  echo "error: no Fashion-MNIST in $raw (bash tools/fetch_fashion_mnist.sh, as root)" >&2
  exit 2
fi

"$alexnet" prepare "$raw" --out "$out/data"
started=$(date +%s.%N)
# shellcheck disable=SC2086 # EXTRA is a list of arguments
"$alexnet" train --data "$out/data" --arch cifar --device "$device" --seed "$seed" --out "$out/run" ${EXTRA:-}
finished=$(date +%s.%N)
python3 -c "print(f'training took {$finished - $started:.1f} s (wall clock, with the validation passes)')"
for checkpoint in best last; do
  [[ -f "$out/run/$checkpoint.safetensors" ]] || continue
  echo "-- $checkpoint checkpoint"
  "$alexnet" eval --checkpoint "$out/run/$checkpoint.safetensors" --data "$out/data" --device "$device"
  "$alexnet" eval --checkpoint "$out/run/$checkpoint.safetensors" --data "$out/data" --device "$device" --ten-crop
done
echo "data, checkpoints and metrics.jsonl in $out"
