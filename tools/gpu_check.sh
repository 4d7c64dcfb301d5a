#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, its driver, and PyTorch with CUDA
# (no Rust toolchain or network needed), runs the prebuilt alexnet-cuda tests with
# the GPU required, runs the command-line workflow there (tools/device_workflow.py:
# train, eval and features on one GPU and as two towers, against the CPU), prints
# the CUDA/cuDNN versions found, and times training
# (batch 128) and inference (batch 256) of the paper's net beside PyTorch eager,
# in fp32, TF32 and bf16 (ours with --precision; PyTorch's bf16 under autocast),
# then the paper's two towers (`--parallel towers`) on two GPUs, or both on one.
# Data parallelism: the workflow trains once more under torchrun
# (`python -m torch.distributed.run --no-python --standalone --nproc-per-node 1`,
# NCCL's group of one) and must match the plain run; with the timings, the
# paper's net at batch 128 under torchrun against the plain run (the per-step
# overhead of NCCL's sums). TIMING_STEPS (default 30) sets that run's length.
# Then bf16's per-layer times with the convolutions' operands in NCHW, in NHWC,
# in NHWC through cuDNN's graph API, and as bf16 values in f32 on TF32 tensor
# cores (--bf16-conv-layout), and the route each shape chose when all four are
# timed; bf16's
# accuracy against fp32 on Fashion-MNIST (experiment precision, 3 seeds) where the
# bundle carries the data.
# Last, how fast the CPU decodes JPEGs for the GPU (loader_bench), and training
# from a JPEG dataset on disk (tools/end_to_end.py) against the bench's step
# from stored bytes, with each epoch's wait for data.
#
#   bash tools/build_gpu_bundle.sh            # on the build machine: makes gpu-bundle/
#   bash tools/gpu_check.sh [BUNDLE_DIR]      # on the GPU machine, from a checkout
#                                             # (BUNDLE_DIR.tar.xz is unpacked if the folder is missing)
#
# SECONDS_PER_MEASUREMENT (default 5) sets the length of each timing; SKIP_BENCH=1
# skips the timings (tests and workflow only); SANITIZE=1 adds the bf16 and op tests
# under compute-sanitizer. STEPS (default all) names the steps to run, from
#   tests phases workflow bench towers bf16 accuracy loader e2e
# (the versions always come first), so that one check can be split between calls
# of a limited length; BUDGET (seconds, default none) skips each step that would
# begin after it, so that a run under a time limit still ends with its summary. STEP_TIMEOUT (default 300) bounds each
# test executable, the workflow and the benchmark in seconds, so that a hang in one
# still leaves the others' results. Exits non-zero if a test, the
# workflow or a benchmark (any mode, or the towers) fails. Each step's header says
# how many seconds the check had run when it began; the last line, its wall time.
set -uo pipefail
cd "$(dirname "$0")/.."

bundle=${1:-gpu-bundle}
all_steps="tests phases workflow bench towers bf16 accuracy loader e2e"
timings="bench towers bf16 accuracy loader e2e"
steps=${STEPS:-$all_steps}
budget=${BUDGET:-0}
skipped=""
for step in $steps; do
  if [[ " $all_steps " != *" $step "* ]]; then
    echo "error: STEPS names '$step'; the steps are: $all_steps" >&2
    exit 2
  fi
done
python=${PYTHON:-python3}
seconds=${SECONDS_PER_MEASUREMENT:-5}
step_timeout=${STEP_TIMEOUT:-300}
status=0

if [[ ! -x "$bundle/alexnet" && -f "$bundle.tar.xz" ]]; then
  # The compressed bundle that build_gpu_bundle.sh writes beside the folder
  # (Python's tarfile, so that neither tar nor xz need be installed here).
  echo "unpacking $bundle.tar.xz"
  "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
    "$bundle.tar.xz" "$(dirname "$bundle")"
fi
if [[ ! -x "$bundle/alexnet" ]]; then
  echo "error: $bundle/alexnet not found; build the bundle with tools/build_gpu_bundle.sh" >&2
  exit 2
fi

source tools/gpu_env.sh

# Each step's header with the seconds since the check began, so that a run's
# log shows where its time went.
section() {
  echo "== $1   [${SECONDS}s]"
}

# Whether step $1 runs: named in STEPS, not a timing under SKIP_BENCH=1, and
# begun within BUDGET.
runs() {
  [[ " $steps " == *" $1 "* ]] || return 1
  if [[ "${SKIP_BENCH:-0}" == 1 && " $timings " == *" $1 "* ]]; then
    return 1
  fi
  if (( budget > 0 && SECONDS >= budget )); then
    echo "== SKIPPED $1: the check has run ${SECONDS}s of its BUDGET of ${budget}s"
    skipped="$skipped $1"
    return 1
  fi
}

section "versions"
echo "libraries looked for in: ${libs:-(none found)}"
echo "NCCL (data parallelism): ${nccl_lib:-not found, so the torchrun checks fail}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
"$python" -c 'import torch; print(f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}")'
# The properties cuDNN plans with, beside the H100 fixture written from NVIDIA's
# published figures that the CPU planning test (dnn::graph) plans for: where they
# differ, this device's (printed) can replace or join it.
cudnn_device="${TMPDIR:-/tmp}/cudnn-device.json"
if "$python" tools/cudnn_device_properties.py read "$cudnn_device"; then
  cat "$cudnn_device"
  "$python" tools/cudnn_device_properties.py compare fixtures/cudnn-device-h100.json "$cudnn_device"
fi
# A one-image run of the small net: the backend's own description (device,
# driver, cuBLAS, cuDNN, NVRTC), and a first sign that it works at all.
if ours=$(timeout "$step_timeout" "$bundle/alexnet" bench --device cuda:0 --arch cifar --seconds 0 --train-batch 2 \
    --infer-batch 2 --layer-steps 0 --json); then
  "$python" -c 'import json, sys; print("ours:", json.loads(sys.stdin.read().strip().splitlines()[-1])["backend"])' <<<"$ours"
else
  echo "FAILED: alexnet bench --device cuda:0 on the cifar preset"
  status=1
fi

export ALEXNET_REQUIRE_GPU=1
# The NCCL id test opens PyTorch's libnccl.so.2 through a link of its own.
if [[ -n "$nccl_lib" ]]; then
  export ALEXNET_NCCL_LIB="$nccl_lib"
fi
# Test threads get 16 MiB stacks instead of 2: CUDA's libraries run on them (cuDNN
# times algorithms on the calling thread), and an overflow inside C++ code is a bare
# segmentation fault.
export RUST_MIN_STACK=16777216
if runs tests; then
  section "tests (ALEXNET_REQUIRE_GPU=1)"
  for test in "$bundle"/tests/*; do
    echo "-- $(basename "$test")"
    if ! timeout "$step_timeout" "$test"; then
      echo "FAILED: $(basename "$test")"
      status=1
    fi
  done
  # SANITIZE=1: the bf16 and op tests once more under compute-sanitizer's memcheck
  # (out-of-bounds and misaligned accesses in our kernels and in what cuDNN is
  # handed), where the machine has it; several times slower, so not by default.
  if [[ "${SANITIZE:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
    for test in "$bundle"/tests/bf16 "$bundle"/tests/ops; do
      [[ -x "$test" ]] || continue
      echo "-- $(basename "$test") under compute-sanitizer"
      if ! timeout "$step_timeout" compute-sanitizer --tool memcheck --error-exitcode 1 "$test"; then
        echo "FAILED: $(basename "$test") under compute-sanitizer"
        status=1
      fi
    done
  fi
fi

if runs phases && [[ -x "$bundle/step_phases" ]]; then
  for precision in fp32 bf16; do
    section "where a training step's time goes (batch 128, $precision)"
    if ! timeout "$step_timeout" "$bundle/step_phases" 128 10 "$precision"; then
      echo "FAILED: step_phases $precision"
      status=1
    fi
  done
fi

# GPUs as CUDA numbers them (after CUDA_VISIBLE_DEVICES), from PyTorch.
gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
towers="cuda:0,cuda:0"
[[ ${gpus:-0} -ge 2 ]] && towers="cuda:0,cuda:1"
if runs workflow; then
  section "workflow: prepare, train, eval and features on the GPU, one device and two towers"
  torchrun="$python -m torch.distributed.run --no-python --standalone --nproc-per-node 1"
  timing_steps=${TIMING_STEPS:-30}
  [[ "${SKIP_BENCH:-0}" == 1 ]] && timing_steps=0
  if ! timeout "$step_timeout" "$python" tools/device_workflow.py --alexnet "$bundle/alexnet" --device cuda:0 --towers "$towers" \
      --launcher "$torchrun" --timing-steps "$timing_steps"; then
    echo "FAILED: the device workflow"
    status=1
  fi
fi

if runs bench; then
  section "benchmark"
  if ! timeout "$step_timeout" "$python" tools/bench_pytorch_cuda.py --alexnet-bin "$bundle/alexnet" --seconds "$seconds" \
      --json-out "${BENCH_JSON:-/dev/null}"; then
    echo "FAILED: the benchmark"
    status=1
  fi
fi

if runs towers; then
  # The paper's layout: one tower per GPU, or both on GPU 0 where there is one.
  # Printed beside the one-GPU figures above; PyTorch has no two-device
  # counterpart of this net to compare with.
  section "two towers: --devices $towers --parallel towers (fp32)"
  if ! timeout "$step_timeout" "$bundle/alexnet" bench --devices "$towers" --parallel towers --seconds "$seconds" \
      --train-batch 128 --infer-batch 256 --layer-steps 2; then
    echo "FAILED: alexnet bench --parallel towers"
    status=1
  fi
fi

if runs bf16; then
  # bf16 convolutions in each layout of their operands, through the graph API,
  # and as bf16 values on TF32 tensor cores (the benchmark above lets each shape
  # take the faster legacy layout): the per-layer tables side by side, and the
  # route each shape chose when all four compete.
  for layout in nchw nhwc graph tf32; do
    section "bf16 convolutions, operands in $layout (--bf16-conv-layout $layout)"
    if ! timeout "$step_timeout" "$bundle/alexnet" --precision bf16 bench --device cuda:0 \
        --bf16-conv-layout "$layout" --seconds 2 --train-batch 128 --infer-batch 256 --layer-steps 3; then
      echo "FAILED: alexnet bench --bf16-conv-layout $layout"
      status=1
    fi
  done
  section "bf16 convolutions: the route each shape chose (ALEXNET_CUDNN_LOG=1, --bf16-conv-layout timed-all)"
  if ! ALEXNET_CUDNN_LOG=1 timeout "$step_timeout" "$bundle/alexnet" --precision bf16 bench --device cuda:0 \
      --bf16-conv-layout timed-all --seconds 0 --train-batch 128 --infer-batch 256 --layer-steps 1 2>&1 \
      | grep -E "chosen|^warning|graph plan"; then
    echo "FAILED: alexnet bench --precision bf16 with ALEXNET_CUDNN_LOG=1 (or no plan said which layout)"
    status=1
  fi
fi

if runs accuracy; then
  # bf16's accuracy contract: the cifar preset on Fashion-MNIST, fp32 against
  # bf16 products, 3 seeds of 4 epochs each; the test errors must end within
  # 0.5 points (read results.md's table).
  if [[ -f "$bundle/fashion-mnist/train-images-idx3-ubyte.gz" ]]; then
    section "bf16 accuracy on the GPU: experiment precision on Fashion-MNIST (3 seeds)"
    work=$(mktemp -d)
    if timeout "$step_timeout" "$bundle/alexnet" prepare "$bundle/fashion-mnist" --out "$work/data" >/dev/null \
        && timeout "$step_timeout" "$bundle/alexnet" experiment precision --data "$work/data" --device cuda:0 \
          --out "$work/precision"; then
      echo "(the table above is also in $work/precision/results.md)"
    else
      echo "FAILED: experiment precision on the GPU"
      status=1
    fi
  else
    echo "SKIPPED: bf16 accuracy on the GPU (no fashion-mnist/ in $bundle)"
  fi
fi

if runs loader && [[ -x "$bundle/loader_bench" ]]; then
  # How many JPEGs a second the machine's cores decode for the GPU (the
  # "N worker threads" line): beside the training rates above, whether the CPU
  # can feed the GPU or nvJPEG is needed.
  section "JPEG decoding on the CPU (loader_bench)"
  if ! timeout 120 "$bundle/loader_bench" 512 2 --encoding jpeg; then
    echo "FAILED: loader_bench"
    status=1
  fi
fi

if runs e2e && [[ -x "$bundle/photo_dataset" ]]; then
  # Training from a JPEG dataset on disk against the bench's step from stored
  # bytes (tools/end_to_end.py). E2E_PRECISIONS (default fp32) lists the modes;
  # E2E_IMAGES (default 20000) the dataset's size.
  for precision in ${E2E_PRECISIONS:-fp32}; do
    section "end to end from a JPEG dataset on disk ($precision)"
    if ! timeout "$step_timeout" "$python" tools/end_to_end.py --alexnet "$bundle/alexnet" \
        --photo-dataset "$bundle/photo_dataset" --device cuda:0 --precision "$precision" \
        --images "${E2E_IMAGES:-20000}"; then
      echo "FAILED: end to end ($precision)"
      status=1
    fi
  done
fi

if [[ $status == 0 ]]; then
  section "GPU check passed"
else
  section "GPU check FAILED (see above)"
fi
if [[ -n "$skipped" ]]; then
  echo "steps not run within the BUDGET of ${budget}s:$skipped (run them with STEPS=\"${skipped# }\")"
fi
echo "GPU check wall time: ${SECONDS} s"
exit $status
