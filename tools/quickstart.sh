#!/usr/bin/env bash
# The quick start: installs Fashion-MNIST (Debian package, checked by sha256),
# builds the `alexnet` binary, prepares the dataset, trains the `cifar` preset on
# it for a few minutes, evaluates the result on the test split and classifies a
# few test images. Everything lands in data/ and runs/ below the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS="${EPOCHS:-3}"
bash tools/fetch_fashion_mnist.sh
cargo build --release -p alexnet-cli
alexnet=./target/release/alexnet

if [ ! -f data/fashion-mnist/dataset.json ]; then
    "$alexnet" prepare /usr/share/datasets/fashion-mnist --out data/fashion-mnist
fi
"$alexnet" info --data data/fashion-mnist
rm -rf runs/quickstart
"$alexnet" train --data data/fashion-mnist --arch cifar --epochs "$EPOCHS" --out runs/quickstart
"$alexnet" eval --checkpoint runs/quickstart/best.safetensors --data data/fashion-mnist
"$alexnet" classify --checkpoint runs/quickstart/best.safetensors examples/images/*.png
"$alexnet" plot runs/quickstart --out runs/quickstart/curves.png
echo "training curves: runs/quickstart/curves.png"
