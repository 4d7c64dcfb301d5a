#!/usr/bin/env python3
"""Runs an ONNX model exported by alexnet in onnxruntime and compares its outputs
with ours.

    python3 tools/onnx_check.py MODEL.onnx INPUTS EXPECTED [--tolerance 1e-4]

INPUTS and EXPECTED are safetensors or .npy files. A safetensors INPUTS holds the
batch under `input` (or as its only tensor), [N, C, H, W] float32; a safetensors
EXPECTED holds `logits` and, optionally, `probabilities`, [N, classes]. A .npy
EXPECTED holds the logits alone; the probabilities are then compared with their
softmax.

Prints the max-norm relative error (max |ours - onnxruntime| / max |ours|) of each
output and exits 0 when all are within the tolerance, 1 when one is not or on any
failure, and 3 when onnxruntime is not installed (so callers can tell "cannot
check" from "wrong"). When the `onnx` package is present, its checker (with shape
inference) runs on the model first.

Its packages: tools/ci/python-requirements.txt, installed into an environment of
its own by `bash tools/ci/python_env.sh` (which prints that interpreter).
"""

import argparse
import sys

EXIT_MISMATCH = 1
EXIT_NO_ONNXRUNTIME = 3


def load_arrays(path):
    """The tensors of a safetensors file by name, or a .npy file's array as ''."""
    import numpy as np

    if path.endswith(".npy"):
        return {"": np.load(path, allow_pickle=False)}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    raise ValueError(f"{path}: expected a .safetensors or .npy file")


def pick(arrays, name, path, required=True):
    if name in arrays:
        return arrays[name]
    if "" in arrays and name in ("input", "logits"):
        return arrays[""]
    if len(arrays) == 1 and name == "input":
        return next(iter(arrays.values()))
    if required:
        raise ValueError(f"{path}: no tensor named '{name}' (has {sorted(arrays)})")
    return None


def softmax(logits):
    import numpy as np

    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def relative_error(got, want):
    """max |got - want| / max |want|: one number for a whole output, insensitive to
    tiny entries (probabilities near zero) whose own relative errors mean nothing."""
    import numpy as np

    got = got.astype(np.float64)
    want = want.astype(np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(np.abs(got - want).max()) / scale


def run_checker(model_path):
    try:
        import onnx
    except ImportError:
        print("onnx checker: skipped (the onnx package is not installed)")
        return
    # By path, so that models over protobuf's 2 GB limit are checked too.
    onnx.checker.check_model(model_path, full_check=True)
    print(f"onnx checker: ok (onnx {onnx.__version__})")


def run_model(ort, model_path, images):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != ["input"]:
        raise ValueError(f"{model_path}: graph inputs {names}, expected ['input']")
    logits, probabilities = session.run(["logits", "probabilities"], {"input": images})
    return logits, probabilities


def compare(name, got, want, tolerance):
    if got.shape != want.shape:
        print(f"{name}: shape {list(got.shape)} from onnxruntime, expected {list(want.shape)}")
        return False
    error = relative_error(got, want)
    ok = error <= tolerance
    verdict = "ok" if ok else f"ABOVE the tolerance {tolerance:g}"
    print(f"{name}: max-norm relative error {error:.3e} over {got.size} values ({verdict})")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the exported .onnx file")
    parser.add_argument("inputs", help="the batch (.safetensors with `input`, or .npy)")
    parser.add_argument("expected", help="our outputs (.safetensors with `logits`, or .npy)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    try:
        import onnxruntime as ort
    except ImportError:
        print(
            "skipped: onnxruntime not installed "
            "(run it with the interpreter `bash tools/ci/python_env.sh` prints)"
        )
        return EXIT_NO_ONNXRUNTIME

    try:
        import numpy as np

        run_checker(args.model)
        images = pick(load_arrays(args.inputs), "input", args.inputs).astype(np.float32)
        expected = load_arrays(args.expected)
        want_logits = pick(expected, "logits", args.expected)
        want_probabilities = pick(expected, "probabilities", args.expected, required=False)
        if want_probabilities is None:
            want_probabilities = softmax(want_logits)
        print(f"onnxruntime {ort.__version__}, batch of {images.shape[0]}, {list(images.shape[1:])}")
        logits, probabilities = run_model(ort, args.model, images)
    except Exception as e:  # any failure is a failed check, reported in one line
        print(f"error: {type(e).__name__}: {e}")
        return EXIT_MISMATCH

    ok = compare("logits", logits, want_logits, args.tolerance)
    ok &= compare("probabilities", probabilities, want_probabilities, args.tolerance)
    return 0 if ok else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
