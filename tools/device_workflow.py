#!/usr/bin/env python3
"""The command-line workflow on a device: prepare, train, evaluate and features.

Writes a small generated dataset (28x28 grey images, a bright bar per class),
then with the `alexnet` binary given:
  - trains a miniature of the paper's two-tower net on --device for 40 steps, and
    again with its towers on --towers (`--devices A,B --parallel towers`);
  - checks both runs' losses fell and stayed finite, and that they agree over the
    first ten steps (the same net, seed, batches and dropout masks);
  - evaluates each checkpoint, and compares its fc features computed on the
    device (views cut there from stored bytes) with those computed on the CPU
    (views cut by the loader), which must agree to 1e-4 of their scale.

With `--launcher "torchrun --no-python --standalone --nproc-per-node 1"` (any
command that starts the binary, given after it), the one-device training runs
again under that launcher with `--device cuda` (NCCL's group of one, whose sums
go through NCCL as with more processes) and must give the plain run's losses;
with `--timing-steps N` as well, the paper's net trains N steps at batch 128 on
generated 256x256 images, plain and under the launcher (twice: the gradients'
sums started during the backward pass, the default, and after it, `--bucket-mb
0`), and the per-step cost of the launcher's sums is printed for both.

Runs anywhere: `--device cpu --towers cpu,cpu` checks the same things on the CPU.
Exits non-zero, saying why, if any check fails. Needs only Python's standard
library.

    python3 tools/device_workflow.py --alexnet gpu-bundle/alexnet --device cuda:0 --towers cuda:0,cuda:0
"""

import argparse
import json
import math
import os
import random
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

NET = Path(__file__).with_name("two-tower-mini.toml")


def write_idx(folder, prefix, count, rng):
    images = bytearray(struct.pack(">IIII", 0x803, count, 28, 28))
    labels = bytearray(struct.pack(">II", 0x801, count))
    for _ in range(count):
        label = rng.randrange(10)
        labels.append(label)
        for y in range(28):
            bar = 200 if y // 3 == label else 20
            images.extend(min(255, bar + rng.randrange(50)) for _ in range(28))
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def run(binary, *args):
    command = [str(binary), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})
    if result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def step_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l)["loss"] for l in lines if json.loads(l).get("kind") == "step"]


def read_f32_tensor(path, name):
    """One f32 tensor of a safetensors file (standard library only)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    start, end = header[name]["data_offsets"]
    body = data[8 + header_len + start:8 + header_len + end]
    return struct.unpack(f"<{len(body) // 4}f", body)


def write_bmp_classes(folder, classes, per_class, side, rng):
    """Class folders of `side` x `side` BMP images: noise, with a class's colour
    in a band (the content only has to be learnable; this is for timing)."""
    row = side * 3
    header = b"BM" + struct.pack("<IHHI", 54 + row * side, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, side, side, 1, 24, 0, row * side, 2835, 2835, 0, 0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True)
        band = bytes((40 * c + k * 70) % 256 for k in range(3)) * side
        for i in range(per_class):
            pixels = bytearray(rng.randbytes(row * side))
            start = (c * side // classes) * row
            pixels[start:start + 8 * row] = band * 8
            (folder / f"class{c}" / f"{i}.bmp").write_bytes(header + pixels)


def step_rates(run_dir):
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(l["images_per_s"], l.get("sum_s")) for l in lines if l.get("kind") == "step"]


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def time_launcher(args, root, rng, failures):
    """The paper's net at batch 128, plain and under the launcher: images/s
    (median over the steps after the first three) and seconds of sums a step."""
    source = root / "photos"
    write_bmp_classes(source, 8, 208, 256, rng)
    data = root / "photos-data"
    run(args.alexnet, "prepare", source, "--out", data)
    rates = {}
    launcher = shlex.split(args.launcher)
    # Under the launcher twice: gradients' sums started during the backward pass
    # (the default on GPUs) and after it (--bucket-mb 0), each against the plain run.
    runs = [("plain", [], []), ("launcher", launcher, []),
            ("launcher, sums after the pass", launcher, ["--bucket-mb", "0"])]
    for index, (label, prefix, extra) in enumerate(runs):
        out = root / f"timing-{index}"
        device = args.device if label == "plain" else launched_device(args.device)
        run(*prefix, args.alexnet, "train", "--data", data, "--arch", "alexnet", "--batch", "128",
            "--holdout", "128", "--max-steps", args.timing_steps, "--log-every", "1", "--quiet",
            "--out", out, "--device", device, *extra)
        steps = step_rates(out)[3:]
        rates[label] = (median([r for r, _ in steps]), median([s for _, s in steps if s is not None]))
        print(f"paper's net, batch 128, {label}: {rates[label][0]:.0f} images/s"
              + (f", sums {rates[label][1] * 1e3:.1f} ms a step" if prefix else ""))
    plain, launched = rates["plain"][0], rates["launcher"][0]
    after = rates["launcher, sums after the pass"][0]
    print(f"the launcher's per-step overhead: {100 * (plain / launched - 1):.1f}% (aim: under 3%); "
          f"with the sums after the pass: {100 * (plain / after - 1):.1f}%")
    if not launched > 0:
        failures.append("the run under the launcher reported no speed")


def launched_device(device):
    """Under a launcher a GPU is named `cuda`: the process's local rank's."""
    return "cuda" if device.startswith("cuda") else device


def placement(flag):
    return ["--devices", flag, "--parallel", "towers"] if "," in flag else ["--device", flag]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alexnet", type=Path, required=True, help="the alexnet binary")
    parser.add_argument("--device", default="cuda:0", help="the one-device placement")
    parser.add_argument("--towers", default="cuda:0,cuda:0", help="the two towers' devices")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--launcher", help="a launcher command to train under as well (torchrun ...)")
    parser.add_argument("--timing-steps", type=int, default=0,
                        help="with --launcher: time this many steps of the paper's net, plain and launched")
    args = parser.parse_args()
    if args.timing_steps and not (args.launcher and args.timing_steps > 3):
        parser.error("--timing-steps goes with --launcher and needs more than 3 steps (the first 3 are not timed)")
    failures = []

    with tempfile.TemporaryDirectory(prefix="alexnet-workflow-") as tmp:
        root = Path(tmp)
        source = root / "source"
        source.mkdir()
        rng = random.Random(3)
        write_idx(source, "train", 640, rng)
        write_idx(source, "t10k", 200, rng)
        data = root / "data"
        run(args.alexnet, "prepare", source, "--out", data)
        arch = NET

        runs = {}
        placements = [("one device", args.device), ("two towers", args.towers)]
        if args.launcher:
            placements.append(("launched", launched_device(args.device)))
        for label, flag in placements:
            out = root / label.replace(" ", "-")
            prefix = shlex.split(args.launcher) if label == "launched" else []
            run(*prefix, args.alexnet, "train", "--data", data, "--arch", arch, "--out", out, "--epochs", "3",
                "--max-steps", args.steps, "--holdout", "64", "--log-every", "1", "--quiet",
                *placement(flag))
            losses = step_losses(out)
            runs[label] = (out, flag, losses)
            start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
            print(f"{label} ({flag}): {len(losses)} steps, loss {start:.3f} -> {end:.3f}")
            if len(losses) != args.steps or not all(math.isfinite(l) for l in losses):
                failures.append(f"{label}: expected {args.steps} finite losses, got {losses}")
            elif not end < 0.8 * start:
                failures.append(f"{label}: the loss did not fall ({start:.3f} -> {end:.3f})")

        one = runs["one device"][2]
        for label in [l for l in runs if l != "one device"]:
            other = runs[label][2]
            # The runs differ only in rounding, which training amplifies step by
            # step; over the first ten steps it stays far below what a wrong
            # exchange, mask or sum does (order 1 from the first step).
            worst = max((abs(a - b) / abs(a) for a, b in zip(one[:10], other[:10])), default=0.0)
            print(f"one device against {label}: largest relative loss difference over ten steps {worst:.2e}")
            if len(other) < 10 or worst > 1e-3:
                failures.append(f"one device and {label} trained differently: {one[:10]} vs {other[:10]}")
        # Its checkpoint is the one-device run's kind; the loop below checks towers.
        runs.pop("launched", None)

        for label, (out, flag, _) in runs.items():
            checkpoint = out / "last.safetensors"
            report = json.loads(run(args.alexnet, "eval", "--checkpoint", checkpoint, "--data", data,
                                    "--json", *placement(flag)))
            print(f"{label}: test top-1 error {100 * report['top1_error']:.1f}%")
            features = {}
            for where in (flag, "cpu"):
                file = root / f"features-{where.replace(',', '-').replace(':', '')}.safetensors"
                run(args.alexnet, "features", "--checkpoint", checkpoint, "--data", data, "--out", file,
                    *placement(where))
                features[where] = read_f32_tensor(file, "features")
            here, there = features[flag], features["cpu"]
            scale = max(map(abs, there))
            diff = max(abs(a - b) for a, b in zip(here, there))
            print(f"{label}: fc features on {flag} against the CPU: {diff:.2e} (scale {scale:.2e})")
            if len(here) != len(there) or diff > 1e-4 * scale:
                failures.append(f"{label}: features on {flag} differ from the CPU's by {diff}")

        if args.launcher and args.timing_steps:
            time_launcher(args, root, rng, failures)

    if failures:
        print("\n".join(f"FAILED: {f}" for f in failures))
        sys.exit(1)
    print("device workflow passed")


if __name__ == "__main__":
    main()
