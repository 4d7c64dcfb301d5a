#!/usr/bin/env bash
# Fetches cuDNN's libraries, cuBLASLt and NCCL (tools/ci/cudnn-requirements.txt:
# three wheels, pinned by sha256, without their dependencies) into .cudnn-ci/lib of
# the checkout and prints the path of libcudnn.so.9 (for ALEXNET_CUDNN_LIB; the
# tests open libcublasLt.so.13 beside it, and libnccl.so.2 as ALEXNET_NCCL_LIB). Reused while the
# requirements file is unchanged. No GPU is needed to load them: the graph API
# tests build and finalize descriptors and plans on the CPU, the NCCL test makes ids.
#
#   export ALEXNET_CUDNN_LIB="$(bash tools/ci/fetch_cudnn.sh)"
set -euo pipefail
cd "$(dirname "$0")/../.."

DIR=.cudnn-ci
REQUIREMENTS=tools/ci/cudnn-requirements.txt
PYTHON=${ALEXNET_BASE_PYTHON:-python3}

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
stamp="$DIR/.made-from"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "fetching cuDNN into $DIR from $REQUIREMENTS" >&2
    rm -rf "$DIR"
    mkdir -p "$DIR/wheel"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
        --require-hashes --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_27_x86_64 -r "$REQUIREMENTS" -d "$DIR/wheel" >&2
    "$PYTHON" - "$DIR" <<'PY'
import pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
wanted = lambda name: (name.startswith("nvidia/cudnn/lib/") and ".so" in name) or name.endswith(
    ("/lib/libcublasLt.so.13", "/lib/libnccl.so.2")
)
for wheel in sorted((out / "wheel").glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in filter(wanted, z.namelist()):
            target = out / "lib" / pathlib.Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
PY
    rm -rf "$DIR/wheel"
    echo "$want" >"$stamp"
fi
test -f "$DIR/lib/libcudnn.so.9"
test -f "$DIR/lib/libcublasLt.so.13"
test -f "$DIR/lib/libnccl.so.2"
echo "$PWD/$DIR/lib/libcudnn.so.9"
