#!/usr/bin/env python3
"""The PyTorch side of `alexnet bench`: the same net, measured the same way, printed beside ours.

Measures with PyTorch on the CPU, for the network of `--arch` (default: the paper's two-tower
`alexnet`, built by tools/torch_nets.py from the same description our binary reads):
  - training step (forward, cross-entropy backward, the paper's SGD update) images/s at batch 128 and 64;
  - inference images/s at batch 64, under torch.inference_mode() and model.eval();
  - latency at batch 1, in ms;
  - peak resident memory of training, in GiB.
Then it runs `alexnet --threads T bench --json` one after the other (never at the same time) and prints a
table: measurement | alexnet (ours) | PyTorch | ratio ours/PyTorch.

    python3 tools/bench_pytorch.py                      # 10 s per measurement, all cores
    python3 tools/bench_pytorch.py --threads 2 --json-out bench.json
    python3 tools/bench_pytorch.py --quick --no-ours    # smoke test: 1 s, batch 8
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# The network is built by the twin module beside this file, so that both sides run one description.
TOOLS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS_DIR))
import torch_nets  # noqa: E402

REPO_ROOT = TOOLS_DIR.parent
GIB = float(1 << 30)

# Seeds are fixed so that two runs measure the same weights and data; the values are arbitrary.
INIT_SEED = 1
DATA_SEED = 2


def time_steps(seconds, step):
    """Runs `step` once to warm up, then for at least `seconds` and at least twice; returns seconds per step.

    This is the rule of our bench (bench.rs, `time_steps`), kept identical so the two figures compare.
    """
    step()
    started = time.perf_counter()
    steps = 0
    while steps < 2 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    return (time.perf_counter() - started) / steps


def spec_value(spec, section, key, default):
    """Reads `spec[section][key]` (or `spec[key]` when section is None), falling back to the paper's value.

    The fallbacks keep the script usable with descriptions that leave a section out, as our presets may.
    """
    table = spec if section is None else spec.get(section) or {}
    value = table.get(key, default)
    return default if value is None else value


def input_shape(spec):
    return (
        int(spec_value(spec, "input", "channels", 3)),
        int(spec_value(spec, "input", "height", 224)),
        int(spec_value(spec, "input", "width", 224)),
    )


# Speed does not depend on the learning rate; a small one keeps the loss finite while the same random
# batch is trained on again and again (at the recipe's 0.01 it diverges within a few steps). Our bench
# uses the same value.
BENCH_LEARNING_RATE = 1e-5


def sgd_settings(spec):
    """The learning rate of the bench and the momentum and weight decay of the description's recipe."""
    return (
        BENCH_LEARNING_RATE,
        float(spec_value(spec, "recipe", "momentum", 0.9)),
        float(spec_value(spec, "recipe", "weight_decay", 0.0005)),
    )


def build_net(arch):
    spec = torch_nets.load_spec(arch)
    net = torch_nets.Net(spec)
    net.init_paper(torch.Generator().manual_seed(INIT_SEED))
    return spec, net


@torch.no_grad()
def paper_sgd_step_in_place(net, lr, momentum, weight_decay, velocities):
    """The update of torch_nets.paper_sgd_step, v <- momentum v - decay lr w - lr dL/dw and w <- w + v with
    decay on weights only, computed in place.

    The twin builds each term as a new tensor, which for 61 million parameters means allocating and
    faulting in hundreds of MB per step: on 2 cores that took about 0.7 s per step against 0.2 s in place.
    That is a cost of the twin's style, not of PyTorch, and it would flatter us by about a tenth at batch 128.
    The two agree to float rounding.
    """
    for name, w in net.named_tensors().items():
        v = velocities.get(name)
        if v is None:
            v = velocities[name] = torch.zeros_like(w)
        decay = weight_decay if name.endswith(".weight") else 0.0
        v.mul_(momentum).add_(w, alpha=-decay * lr).add_(w.grad, alpha=-lr)
        w.add_(v)


def random_batch(generator, n, shape, classes):
    # Pixels on the paper's scale, 0-255 minus a mean, so roughly +-128, as our bench draws them:
    # the paper's initialisation and LRN constants are sized for that scale.
    images = torch.rand((n, *shape), generator=generator) * 256.0 - 128.0
    labels = torch.randint(classes, (n,), generator=generator)
    return images, labels


def precision_context(precision):
    """bf16: PyTorch's CPU autocast (bf16 matrix products and convolutions, f32 weights); fp32: nothing."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_training(arch, batches, seconds, precision="fp32"):
    """Times training steps at each batch size in turn; returns the per-batch figures and the peak memory.

    All batch sizes share one net and one set of momentum buffers, as they do in our bench.
    """
    spec, net = build_net(arch)
    net.train()
    classes = int(spec_value(spec, None, "classes", 1000))
    shape = input_shape(spec)
    lr, momentum, weight_decay = sgd_settings(spec)
    velocities = {}
    generator = torch.Generator().manual_seed(DATA_SEED)
    results = []
    for batch in batches:
        images, labels = random_batch(generator, batch, shape, classes)

        def step():
            # Dropping the gradients is PyTorch's default: backward then writes fresh ones instead of
            # adding to zeroed buffers, which saves a pass over the 61 million gradients.
            net.zero_grad(set_to_none=True)
            with precision_context(precision):
                loss = F.cross_entropy(net(images), labels)
            loss.backward()
            paper_sgd_step_in_place(net, lr, momentum, weight_decay, velocities)
            # Reading the loss costs nothing on the CPU and stops a diverged run from being timed as valid.
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"loss became {value} at batch {batch}")

        per_step = time_steps(seconds, step)
        results.append({"batch": batch, "images_per_s": batch / per_step, "ms_per_step": per_step * 1e3})
        log(f"pytorch: training step, batch {batch}: {batch / per_step:.1f} images/s")
    # Linux reports ru_maxrss in KiB; bytes match our bench's `peak_resident_bytes_training`.
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results, peak_bytes


def measure_training_in_subprocess(args, batches):
    """Runs the training measurements in a fresh interpreter so its peak memory is training's alone.

    Peak resident memory only grows, so inference run earlier in the same process, or anything else this
    process allocated, would show up in it; our bench reads its figure right after training as well.
    """
    command = [
        sys.executable, str(Path(__file__).resolve()), "--training-child",
        "--arch", args.arch, "--threads", str(args.threads), "--seconds", str(args.seconds),
        "--train-batch", ",".join(str(b) for b in batches), "--precision", args.precision,
    ]
    # Progress on stderr passes through; the figures come back as JSON on stdout.
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"the PyTorch training measurement failed (exit status {finished.returncode})")
    report = last_json_line(finished.stdout)
    return report["train"], report["peak_resident_bytes_training"]


def measure_inference(net, images, seconds, precision="fp32"):
    net.eval()
    with torch.inference_mode(), precision_context(precision):
        return time_steps(seconds, lambda: net(images))


def measure_pytorch(args):
    train_batches = args.train_batch
    train, peak_bytes = measure_training_in_subprocess(args, train_batches)

    spec, net = build_net(args.arch)
    classes = int(spec_value(spec, None, "classes", 1000))
    shape = input_shape(spec)
    generator = torch.Generator().manual_seed(DATA_SEED + 1)

    images, _ = random_batch(generator, args.infer_batch, shape, classes)
    per_batch = measure_inference(net, images, args.seconds, args.precision)
    inference = {"batch": args.infer_batch, "images_per_s": args.infer_batch / per_batch}
    log(f"pytorch: inference, batch {args.infer_batch}: {inference['images_per_s']:.1f} images/s")

    one, _ = random_batch(generator, 1, shape, classes)
    # Our bench caps the latency measurement at 5 s, since a single image is timed precisely much sooner.
    latency = measure_inference(net, one, min(args.seconds, 5.0), args.precision)
    log(f"pytorch: latency, batch 1: {latency * 1e3:.2f} ms")

    return {
        "arch": args.arch,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "train": train,
        "inference": inference,
        "latency_batch1_ms": latency * 1e3,
        "peak_resident_bytes_training": peak_bytes,
    }


def resolve_binary(path):
    """Finds our binary relative to the working directory, else relative to the repository root."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    beside_repo = REPO_ROOT / candidate
    return beside_repo if beside_repo.exists() else candidate


def run_ours(args, binary):
    command = [
        str(binary), "--threads", str(args.threads), "--precision", args.precision, "bench", "--json",
        "--arch", args.arch, "--seconds", str(args.seconds), "--layer-steps", "0",
        "--train-batch", ",".join(str(b) for b in args.train_batch),
        "--infer-batch", str(args.infer_batch),
    ]
    log("ours: " + " ".join(command))
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit status {finished.returncode})")
    return last_json_line(finished.stdout)


def last_json_line(text):
    """Parses the last non-empty line of a child's stdout, so stray lines printed before it do no harm."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("the child process printed no figures")
    return json.loads(lines[-1])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def rows(ours, pytorch):
    """Pairs the figures of both sides: (key, label, ours, pytorch, number format). Missing figures are None."""

    def train_rate(report, batch):
        if report is None:
            return None
        for entry in report.get("train", []):
            if entry.get("batch") == batch:
                return entry.get("images_per_s")
        return None

    def field(report, *keys):
        value = report
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def gib(report):
        value = field(report, "peak_resident_bytes_training")
        return None if value is None else value / GIB

    table = []
    for batch in pytorch["train"]:
        b = batch["batch"]
        table.append((f"train_batch{b}_images_per_s", f"training step, batch {b} (images/s)",
                      train_rate(ours, b), train_rate(pytorch, b), ".1f"))
    b = pytorch["inference"]["batch"]
    table.append((f"inference_batch{b}_images_per_s", f"inference, batch {b} (images/s)",
                  field(ours, "inference", "images_per_s"), field(pytorch, "inference", "images_per_s"), ".1f"))
    table.append(("latency_batch1_ms", "latency, batch 1 (ms, lower is better)",
                  field(ours, "latency_batch1_ms"), field(pytorch, "latency_batch1_ms"), ".2f"))
    peak_batch = max(entry["batch"] for entry in pytorch["train"])
    table.append(("peak_training_gib", f"peak memory, training batch {peak_batch} (GiB, lower is better)",
                  gib(ours), gib(pytorch), ".2f"))
    return table


def ratio(ours, pytorch):
    if ours is None or pytorch is None or pytorch == 0:
        return None
    return ours / pytorch


def print_report(meta, ours, pytorch):
    print(f"alexnet bench beside PyTorch: {meta['arch']}, {meta['precision']}, {meta['threads']} threads, "
          f"{meta['seconds']:g} s per measurement")
    print(f"  CPU: {meta['cpu']}")
    print(f"  PyTorch {meta['torch_version']}; ours: {ours.get('backend', 'alexnet') if ours else 'no figures'}")
    print(f"  date: {meta['date']}")
    print()
    header = ("measurement", "alexnet (ours)", "PyTorch", "ours/PyTorch")
    body = []
    for _, label, mine, theirs, fmt in rows(ours, pytorch):
        r = ratio(mine, theirs)
        body.append((
            label,
            "-" if mine is None else format(mine, fmt),
            "-" if theirs is None else format(theirs, fmt),
            "-" if r is None else f"{r:.2f}x",
        ))
    print_columns(header, body)


def print_columns(header, body):
    """Prints `header`, a rule, and the rows of `body` (as many strings each as `header` has) as aligned
    columns: the first left-aligned, the figures right-aligned. Shared with bench_pytorch_cuda.py."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def show(row):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  " + " | ".join(cells))

    show(header)
    print("  " + "-+-".join("-" * w for w in widths))
    for row in body:
        show(row)


def log(message):
    print(message, file=sys.stderr, flush=True)


def batch_list(text):
    batches = [int(part) for part in text.split(",") if part.strip()]
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    # A batch listed twice would only repeat a measurement and make the table ambiguous.
    return list(dict.fromkeys(batches))


def parse_args():
    parser = argparse.ArgumentParser(
        description="Measure the PyTorch twin of our net on the CPU and print it beside `alexnet bench`.")
    parser.add_argument("--arch", default="alexnet", help="a preset name or the path of a TOML description")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for both PyTorch and ours (default: all cores)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds to run each measurement for, after one warm-up step")
    parser.add_argument("--train-batch", type=batch_list, default=[128, 64],
                        help="batch sizes of the training-step measurements (comma-separated)")
    parser.add_argument("--infer-batch", type=int, default=64, help="batch size of the inference measurement")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: our --precision bf16 beside PyTorch's bf16 autocast")
    parser.add_argument("--alexnet-bin", default="target/release/alexnet", help="our binary")
    parser.add_argument("--no-ours", action="store_true", help="measure PyTorch only")
    parser.add_argument("--json-out", metavar="FILE", help="also write all figures as JSON to FILE")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 s per measurement and batch 8 everywhere")
    # The training measurement re-runs this script in a fresh process; users have no need for the flag.
    parser.add_argument("--training-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.0
        args.train_batch = [8]
        args.infer_batch = 8
    if args.threads is None or args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.infer_batch < 1:
        parser.error("--infer-batch must be at least 1")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)

    if args.training_child:
        train, peak_bytes = measure_training(args.arch, args.train_batch, args.seconds, args.precision)
        print(json.dumps({"train": train, "peak_resident_bytes_training": peak_bytes}))
        return 0

    # Checked before the PyTorch runs, which take minutes, rather than after them.
    binary = None
    if not args.no_ours:
        binary = resolve_binary(args.alexnet_bin)
        if not binary.is_file():
            log(f"error: our binary {binary} does not exist; build it with "
                "`cargo build --release`, pass --alexnet-bin, or use --no-ours")
            return 2

    meta = {
        "arch": args.arch,
        "threads": args.threads,
        "seconds": args.seconds,
        "precision": args.precision,
        "torch_version": torch.__version__,
        "cpu": cpu_model(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    pytorch = measure_pytorch(args)
    # Ours runs only after PyTorch has finished, so the two never share the cores.
    ours, ours_error = None, None
    if binary is not None:
        try:
            ours = run_ours(args, binary)
        except (RuntimeError, ValueError) as error:
            # The PyTorch figures took minutes to measure, so they are still printed when ours fails.
            ours_error = str(error)
            log(f"error: {ours_error}")

    print_report(meta, ours, pytorch)
    if args.json_out:
        ratios = {key: ratio(mine, theirs) for key, _, mine, theirs, _ in rows(ours, pytorch)}
        report = {**meta, "pytorch": pytorch, "ours": ours, "ratios_ours_over_pytorch": ratios}
        if ours_error is not None:
            report["ours_error"] = ours_error
        with open(args.json_out, "w") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    return 1 if ours_error is not None else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as error:
        # A failed child or a diverged loss is reported in one line; its own output is already above.
        log(f"error: {error}")
        sys.exit(1)
