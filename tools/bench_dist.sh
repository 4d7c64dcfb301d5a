#!/usr/bin/env bash
# Data-parallel training speed on one machine: 2 processes x 1 thread under
# mpirun against 1 process x 2 threads, at the same global batch, for the
# `cifar` preset on Fashion-MNIST and the paper's `alexnet` on 224x224 crops.
# Prints images/s (median over the step lines after the first) and seconds per
# step, and for the 2-process runs the seconds per step spent waiting at the
# check-in and waiting for the gradients' sums (244 MB of them for `alexnet`)
# after the backward pass: with the sums in buckets during the pass (the
# default) what the pass did not hide, with `--bucket-mb 0` ("after") all of it.
#
#   tools/bench_dist.sh [REPEATS]        (default 2; configurations alternate)
#
# ALEXNET names a binary built with `--features mpi` (default: a release build,
# made here). Needs Open MPI (apt-get install openmpi-bin libopenmpi-dev
# libclang-dev). Work files go to target/bench-dist.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-2}
alexnet=${ALEXNET:-target/release/alexnet}
if [ -z "${ALEXNET:-}" ]; then
    cargo build --release -p alexnet-cli --features mpi
fi
work=target/bench-dist
mkdir -p "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Fashion-MNIST for `cifar`.
if [ ! -d "$work/fashion" ]; then
    bash tools/fetch_fashion_mnist.sh
    "$alexnet" prepare /usr/share/datasets/fashion-mnist --out "$work/fashion"
fi
# 256x256 images for `alexnet`: the repository's photos, copied into two
# classes (the speed depends on the images' size, not on what they show).
if [ ! -d "$work/photos" ]; then
    for class in a b; do
        mkdir -p "$work/photo-source/$class"
        for i in $(seq 1 352); do
            for photo in crates/alexnet-data/tests/photos/*.jpg; do
                cp "$photo" "$work/photo-source/$class/$i-$(basename "$photo")"
            done
        done
    done
    "$alexnet" prepare "$work/photo-source" --out "$work/photos"
fi

# run NAME PROCESSES THREADS ARCH DATA STEPS LOG_EVERY [TRAIN FLAGS...]
run() {
    local name=$1 processes=$2 threads=$3 arch=$4 data=$5 steps=$6 every=$7
    shift 7
    local out="$work/run-$name"
    rm -rf "$out"
    local args=(--threads "$threads" train --arch "$arch" --data "$data" --out "$out"
        --batch 128 --holdout 64 --max-steps "$steps" --log-every "$every"
        --checkpoint-every 100000 --quiet "$@")
    if [ "$processes" = 1 ]; then
        "$alexnet" "${args[@]}" 2>/dev/null
    else
        mpirun --oversubscribe --bind-to core -np "$processes" "$alexnet" "${args[@]}" 2>/dev/null
    fi
    python3 - "$out/metrics.jsonl" "$name" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = [l for l in lines if l.get("kind") == "step"][1:]
rate = statistics.median(l["images_per_s"] for l in steps)
extra = f"  {128 / rate:.3f} s/step"
if "sum_s" in steps[0]:
    wait = statistics.mean(l["wait_s"] for l in steps)
    total = statistics.mean(l["sum_s"] for l in steps)
    extra += f", check-in wait {wait:.3f} s/step, waiting for sums {total:.3f} s/step"
print(f"{sys.argv[2]:<24} {rate:8.1f} images/s{extra}")
PY
}

lscpu | grep -E '^Model name' || true
"$alexnet" --version
for repeat in $(seq 1 "$repeats"); do
    echo "== repeat $repeat"
    run cifar-1x2 1 2 cifar "$work/fashion" 60 10
    run cifar-2x1 2 1 cifar "$work/fashion" 60 10
    run cifar-2x1-after 2 1 cifar "$work/fashion" 60 10 --bucket-mb 0
    run alexnet-1x2 1 2 alexnet "$work/photos" 8 2
    run alexnet-2x1 2 1 alexnet "$work/photos" 8 2
    run alexnet-2x1-after 2 1 alexnet "$work/photos" 8 2 --bucket-mb 0
done
