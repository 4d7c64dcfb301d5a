#!/usr/bin/env bash
# Builds what tools/gpu_check.sh runs on a GPU machine that has no Rust toolchain:
# the `alexnet` binary with the CUDA backend, the alexnet-cuda test executables,
# its step_phases example (where a training step's time goes) and the data crate's
# photo_dataset example (a JPEG dataset for timing training from disk) and
# loader_bench (how fast this machine's cores decode JPEGs for the GPU),
# stripped of debug information and copied into one folder (default gpu-bundle/,
# ignored by git), with Fashion-MNIST's four IDX files (30 MB) where this machine
# has them (tools/fetch_fashion_mnist.sh), for the GPU's bf16 accuracy check.
# Copy that folder next to a checkout of this repository on the GPU machine and
# run `bash tools/gpu_check.sh`; or carry the compressed copy, gpu-bundle.tar.xz
# (also written), which gpu_check.sh unpacks when the folder is not there.
#
#   bash tools/build_gpu_bundle.sh [OUT_DIR]
#   PROFILE=dev bash tools/build_gpu_bundle.sh   # the (optimised) dev profile: quicker to build
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-gpu-bundle}
profile=${PROFILE:-release}
case "$profile" in
  release) flag=(--release); dir=release ;;
  dev) flag=(); dir=debug ;;
  *) echo "PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac

cargo build "${flag[@]}" -p alexnet-cli --features cuda
cargo build "${flag[@]}" -p alexnet-cuda --example step_phases
cargo build "${flag[@]}" -p alexnet-data --example photo_dataset --example loader_bench
# The test executables' paths, from cargo's JSON messages (one per test target).
mapfile -t tests < <(
  cargo test "${flag[@]}" -p alexnet-cuda --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") == "compiler-artifact" and message.get("profile", {}).get("test") \
            and message.get("executable"):
        print(message["target"]["name"] + "\t" + message["executable"])
')

rm -rf "$out"
mkdir -p "$out/tests"
cp "target/$dir/alexnet" "$out/alexnet"
cp "target/$dir/examples/step_phases" "$out/step_phases"
cp "target/$dir/examples/photo_dataset" "$out/photo_dataset"
cp "target/$dir/examples/loader_bench" "$out/loader_bench"
for entry in "${tests[@]}"; do
  name=${entry%%$'\t'*}
  cp "${entry#*$'\t'}" "$out/tests/$name"
done
# Debug information is most of their size, and the bundle travels.
if command -v strip >/dev/null; then
  strip --strip-debug "$out/alexnet" "$out/step_phases" "$out/photo_dataset" "$out/loader_bench" \
    "$out"/tests/*
fi
fashion=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [[ -f "$fashion/train-images-idx3-ubyte.gz" ]]; then
  mkdir -p "$out/fashion-mnist"
  cp "$fashion"/*-ubyte.gz "$out/fashion-mnist/"
else
  echo "note: no Fashion-MNIST in $fashion: the GPU check will skip its bf16 accuracy step"
fi
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || true
git status --short -- crates Cargo.toml Cargo.lock > "$out/UNCOMMITTED" 2>/dev/null || true
echo "built ($profile) into $out:"
ls -l "$out" "$out/tests"
du -sh "$out"
# The folder as one xz-compressed tar beside it: the binaries shrink about 4x,
# so bundle, data and checkout fit the 64 MiB a device call carries (the folder
# alone, data included, does not). gpu_check.sh unpacks it where the folder is
# missing.
archive="$out.tar.xz"
tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | xz -T0 -6 > "$archive.part"
mv "$archive.part" "$archive"
echo "and compressed: $archive ($(du -h "$archive" | cut -f1)); carry that instead of the folder"
