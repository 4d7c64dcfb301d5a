#!/usr/bin/env bash
# Makes the Python environment that the tests and CI steps run in, and prints its
# interpreter's path (for ALEXNET_PYTHON). The environment is a venv in .venv-ci/
# of the checkout, made without system site packages, holding exactly
# tools/ci/python-requirements.txt (pinned by version and sha256): a package
# installed by hand elsewhere cannot hide a missing line. It is reused while the
# requirements file and the interpreter are unchanged, and rebuilt otherwise.
#
#   export ALEXNET_PYTHON="$(bash tools/ci/python_env.sh)"
set -euo pipefail
cd "$(dirname "$0")/../.."

ENV_DIR=.venv-ci
REQUIREMENTS=tools/ci/python-requirements.txt
BASE_PYTHON=${ALEXNET_BASE_PYTHON:-python3}

# What the environment was made from: the requirements and the interpreter.
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$BASE_PYTHON" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
stamp="$ENV_DIR/.made-from"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "making $ENV_DIR from $REQUIREMENTS" >&2
    rm -rf "$ENV_DIR"
    "$BASE_PYTHON" -m venv "$ENV_DIR"
    # No user site, no hand-installed packages: only what the file pins.
    PYTHONNOUSERSITE=1 "$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input --require-hashes --only-binary=:all: -r "$REQUIREMENTS" >&2
    echo "$want" >"$stamp"
fi
echo "$PWD/$ENV_DIR/bin/python"
