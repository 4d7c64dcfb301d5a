#!/usr/bin/env bash
# tools/gpu_check.sh on a machine without a GPU, with a stub bundle whose every
# binary fails at once: each step must still run (under `set -u`, through every
# branch), report its failure, and leave the check's summary; STEPS must refuse
# a name it does not know, and BUDGET must skip the steps that would begin too
# late and say which. The GPU itself is what this cannot check.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${ALEXNET_PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle="$work/bundle"
mkdir -p "$bundle/tests" "$bundle/fashion-mnist"
for binary in alexnet step_phases loader_bench photo_dataset; do
  printf '#!/bin/sh\necho "stub %s $*"\nexit 1\n' "$binary" >"$bundle/$binary"
  chmod +x "$bundle/$binary"
done
# step_phases can be made slow, to use up a budget.
printf '#!/bin/sh\nsleep "${STUB_SECONDS:-0}"\nexit 1\n' >"$bundle/step_phases"
printf '#!/bin/sh\necho "stub test passes"\n' >"$bundle/tests/stub"
chmod +x "$bundle/tests/stub"
# The accuracy step runs where the bundle carries Fashion-MNIST.
touch "$bundle/fashion-mnist/train-images-idx3-ubyte.gz"

fail() {
  echo "gpu_check rehearsal: $*" >&2
  exit 1
}

# Every step, each failing.
log="$work/all.log"
status=0
PYTHON="$python" STEP_TIMEOUT=60 bash tools/gpu_check.sh "$bundle" >"$log" 2>&1 || status=$?
[[ $status == 1 ]] || fail "expected exit status 1 with failing stubs, got $status (log: $(tail -5 "$log"))"
if grep -E "unbound variable|syntax error|command not found" "$log"; then
  fail "the script itself failed (above)"
fi
for header in "versions" "tests (ALEXNET_REQUIRE_GPU=1)" "where a training step's time goes" "workflow:" \
    "benchmark" "two towers:" "operands in tf32" "the route each shape chose" "bf16 accuracy on the GPU" \
    "JPEG decoding on the CPU" "end to end from a JPEG dataset" "GPU check FAILED"; do
  grep "^== " "$log" | grep -qF "$header" || fail "no step '$header' in the log"
done
grep -q "^GPU check wall time: " "$log" || fail "no wall time at the end"

# A name STEPS does not know.
status=0
STEPS="tests bogus" bash tools/gpu_check.sh "$bundle" >"$work/bogus.log" 2>&1 || status=$?
[[ $status == 2 ]] || fail "STEPS with an unknown name: expected exit status 2, got $status"
grep -q "STEPS names 'bogus'" "$work/bogus.log" || fail "STEPS with an unknown name: no message naming it"

# A budget the first step uses up (step_phases runs twice, 3 s each, and begins
# well within 5 s): the rest are skipped, and named.
log="$work/budget.log"
status=0
STUB_SECONDS=3 BUDGET=5 STEPS="phases loader e2e" PYTHON="$python" bash tools/gpu_check.sh "$bundle" \
  >"$log" 2>&1 || status=$?
[[ $status == 1 ]] || fail "with a budget: expected exit status 1, got $status"
grep -q "== SKIPPED loader" "$log" || fail "with a budget: the loader step was not skipped"
grep -q "== where a training step's time goes" "$log" || fail "with a budget: the first step did not run"
grep -q 'steps not run within the BUDGET of 5s: loader e2e (run them with STEPS="loader e2e")' "$log" \
  || fail "with a budget: no line naming the steps left ($(grep 'not run' "$log" || true))"
echo "gpu_check rehearsal: every step ran and failed as its stub did; STEPS and BUDGET behave"
