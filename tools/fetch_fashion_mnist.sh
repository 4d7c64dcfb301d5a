#!/usr/bin/env bash
# Installs Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, MIT
# licence) from Debian's `dataset-fashion-mnist` package into
# /usr/share/datasets/fashion-mnist/, and checks the four files against pinned
# sha256 sums, so the real-data tests read exactly the files they were written for.
# Run as root (or with sudo available). Does nothing but the check when the files
# are already there.
set -euo pipefail

DIR=/usr/share/datasets/fashion-mnist
SUMS="\
b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7  train-images-idx3-ubyte.gz
0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056  train-labels-idx1-ubyte.gz
cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa  t10k-images-idx3-ubyte.gz
8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05  t10k-labels-idx1-ubyte.gz"

if ! (cd "$DIR" 2>/dev/null && echo "$SUMS" | sha256sum --check --quiet --status); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    fi
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
fi

cd "$DIR"
echo "$SUMS" | sha256sum --check --quiet
echo "Fashion-MNIST ready in $DIR"
