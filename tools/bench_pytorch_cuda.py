#!/usr/bin/env python3
"""`alexnet bench --device cuda:0` beside PyTorch, eager and at its best, on the same GPU, same net, same rules.

The net is the one tools/torch_nets.py builds from our description (default: the paper's `alexnet`, two
towers as groups 2 and LRN within each tower), measured as tools/bench_pytorch.py measures it on the CPU:
  - training step (forward, cross-entropy backward, the paper's SGD update) at batch 128;
  - inference (eval mode, no autograd) at batch 256;
  - latency at batch 1.
Both sides start every step from a batch in host memory and end it with a value back on the host (the loss,
or the logits), as our bench does: each step includes its transfers and a synchronisation.

PyTorch runs in fp32 with TF32 off (cuDNN would otherwise use TF32 for fp32 convolutions by default) and
cudnn.benchmark on (it times the convolution algorithms once per shape: the strongest eager baseline).
Unless --fp32-only, it also runs with TF32 allowed and under bf16 autocast. Unless --no-compile, each mode
also runs as a speed-conscious user runs PyTorch: channels-last tensors and `torch.compile` (mode "default",
which also fuses the composite per-tower LRN), cudnn.benchmark on; its compile time (the first steps) is
reported apart and not counted in its speed. "PyTorch's best" is the faster of eager and compiled per row.
Our binary runs once per mode
PyTorch runs, with `--precision fp32|tf32|bf16`; only the fp32 run times the per-layer breakdown. A mode of
ours that fails is reported with the end of its stderr in place of its figures; the other modes still count.

    python3 tools/bench_pytorch_cuda.py --alexnet-bin gpu-bundle/alexnet
    python3 tools/bench_pytorch_cuda.py --no-ours --seconds 2 --fp32-only

`--torch-device cpu` runs PyTorch's side on the CPU instead: a rehearsal of the script (eager and compiled,
every mode) on a machine without a GPU, whose figures say nothing of a GPU's.
"""

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TOOLS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS_DIR))
import bench_pytorch  # noqa: E402  (the CPU bench: net, data, SGD and timing rules shared with it)

GIB = float(1 << 30)
STDERR_TAIL_LINES = 15  # of a failed run of ours, shown in place of its figures


def time_steps(seconds, step):
    """bench_pytorch.time_steps: one warm-up step, then at least `seconds` and at least two steps.

    Every step ends by reading a value back to the host, which waits for the GPU, so wall time is GPU time.
    """
    return bench_pytorch.time_steps(seconds, step)


def set_mode(mode):
    """fp32: no TF32 anywhere; tf32: TF32 in convolutions and matrix products; bf16: TF32 off, autocast on."""
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(mode, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(mode == "bf16"))


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sgd_step(net, x, y, mode, sgd, velocities, what):
    """Forward, cross-entropy backward and the paper's SGD update on one batch already on the GPU; reads the
    loss back (which waits for the GPU) and fails if it is not finite."""
    lr, momentum, weight_decay = sgd
    net.zero_grad(set_to_none=True)
    with autocast(mode, x.device):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    bench_pytorch.paper_sgd_step_in_place(net, lr, momentum, weight_decay, velocities)
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"loss became {value} ({mode}, {what})")


def prepared(net, images, compiled):
    """The net (and a batch's layout) as PyTorch is run at its best: channels-last and compiled; as built
    otherwise."""
    if not compiled:
        return net, (lambda x: x)
    net = net.to(memory_format=torch.channels_last)
    return torch.compile(net), (lambda x: x.contiguous(memory_format=torch.channels_last))


def timed_with_compile(seconds, step, compiled):
    """time_steps, after (when compiled) two steps timed apart: compiling happens in the first calls."""
    compile_s = None
    if compiled:
        started = time.perf_counter()
        step()
        step()
        compile_s = time.perf_counter() - started
    return time_steps(seconds, step), compile_s


def measure_training(arch, batch, seconds, mode, device, compiled=False):
    spec, net = bench_pytorch.build_net(arch)
    net = net.to(device).train()
    classes = int(bench_pytorch.spec_value(spec, None, "classes", 1000))
    shape = bench_pytorch.input_shape(spec)
    lr, momentum, weight_decay = bench_pytorch.sgd_settings(spec)
    velocities = {}
    generator = torch.Generator().manual_seed(bench_pytorch.DATA_SEED)
    images, labels = bench_pytorch.random_batch(generator, batch, shape, classes)
    set_mode(mode)
    reset_peak_memory(device)
    model, layout = prepared(net, images, compiled)

    def step():
        x, y = layout(images.to(device)), labels.to(device)
        sgd_step(model, x, y, mode, (lr, momentum, weight_decay), velocities, f"batch {batch}")

    per_step, compile_s = timed_with_compile(seconds, step, compiled)
    peak = peak_memory(device)
    del net, model, velocities
    release_memory(device)
    return {"batch": batch, "images_per_s": batch / per_step, "ms_per_step": per_step * 1e3,
            "peak_device_bytes": peak, "compile_s": compile_s}


def measure_training_from_bytes(arch, batch, seconds, mode, device, compiled=False):
    """The training step from a batch of stored bytes in host memory, as `alexnet bench`'s "from stored bytes"
    row: stored images 1/8 larger than the input on each side go to the GPU as uint8, and each image's view
    (its own offset and reflection) is cut there, converted to float and centred, in a few batched tensor
    operations (advanced indexing), as a user who moves the crop onto the GPU would write it."""
    spec, net = bench_pytorch.build_net(arch)
    net = net.to(device).train()
    classes = int(bench_pytorch.spec_value(spec, None, "classes", 1000))
    channels, height, width = bench_pytorch.input_shape(spec)
    stored_h, stored_w = height + height // 8, width + width // 8
    lr, momentum, weight_decay = bench_pytorch.sgd_settings(spec)
    velocities = {}
    generator = torch.Generator().manual_seed(bench_pytorch.DATA_SEED + 2)
    pixels = torch.randint(0, 256, (batch, stored_h, stored_w, channels), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    top = torch.randint(0, stored_h - height + 1, (batch,), generator=generator)
    left = torch.randint(0, stored_w - width + 1, (batch,), generator=generator)
    flip = torch.randint(0, 2, (batch,), generator=generator).bool()
    rows = (top[:, None] + torch.arange(height))[:, :, None].to(device)
    columns = torch.arange(width)
    columns = torch.where(flip[:, None], left[:, None] + width - 1 - columns, left[:, None] + columns)
    columns = columns[:, None, :].to(device)
    images = torch.arange(batch)[:, None, None].to(device)
    set_mode(mode)
    model, layout = prepared(net, None, compiled)

    def step():
        stored, y = pixels.to(device), labels.to(device)
        x = layout(stored[images, rows, columns].permute(0, 3, 1, 2).float() - 128.0)
        sgd_step(model, x, y, mode, (lr, momentum, weight_decay), velocities, f"batch {batch}, from bytes")

    per_step, compile_s = timed_with_compile(seconds, step, compiled)
    del net, model, velocities
    release_memory(device)
    return {"batch": batch, "images_per_s": batch / per_step, "ms_per_step": per_step * 1e3,
            "compile_s": compile_s}


def measure_inference(arch, batch, seconds, mode, device, compiled=False):
    spec, net = bench_pytorch.build_net(arch)
    net = net.to(device).eval()
    classes = int(bench_pytorch.spec_value(spec, None, "classes", 1000))
    shape = bench_pytorch.input_shape(spec)
    generator = torch.Generator().manual_seed(bench_pytorch.DATA_SEED + 1)
    images, _ = bench_pytorch.random_batch(generator, batch, shape, classes)
    set_mode(mode)
    model, layout = prepared(net, images, compiled)

    # Eager at its best runs under inference_mode; compiled graphs are traced under no_grad.
    no_autograd = torch.no_grad if compiled else torch.inference_mode

    def step():
        with no_autograd(), autocast(mode, device):
            logits = model(layout(images.to(device)))
        logits.float().cpu()

    per_batch, compile_s = timed_with_compile(seconds, step, compiled)
    del net, model
    release_memory(device)
    return {"batch": batch, "images_per_s": batch / per_batch, "ms_per_batch": per_batch * 1e3,
            "compile_s": compile_s}


def measure_mode(args, mode, compiled):
    """PyTorch's three measurements in one mode, eager or compiled; a compiled run that fails (no
    compiler on the machine, an unsupported operation) is reported, not fatal."""
    kind = "compiled, channels-last" if compiled else "eager"
    device = torch.device(args.torch_device)
    try:
        train = measure_training(args.arch, args.train_batch, args.seconds, mode, device, compiled)
        from_bytes = measure_training_from_bytes(args.arch, args.train_batch, args.seconds, mode, device,
                                                 compiled)
        infer = measure_inference(args.arch, args.infer_batch, args.seconds, mode, device, compiled)
    except Exception as e:  # noqa: BLE001 (torch.compile raises many kinds)
        if not compiled:
            raise
        log(f"pytorch {mode} {kind}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        torch._dynamo.reset()
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    log(f"pytorch {mode} {kind}: training {train['images_per_s']:.1f}, from bytes "
        f"{from_bytes['images_per_s']:.1f}, inference {infer['images_per_s']:.1f} images/s")
    if compiled:
        torch._dynamo.reset()
    return {"train": train, "train_from_bytes": from_bytes, "inference": infer}


# The modes whose run also prints our per-layer breakdown.
PER_LAYER_MODES = ("fp32", "bf16")


def run_ours(args, mode):
    """Our bench in one mode (`--precision`, a global flag, before the subcommand); the per-layer breakdown
    in fp32 and bf16. Returns (figures, None), or (None, what went wrong with the end of the child's stderr)."""
    layer_steps = args.layer_steps if mode in PER_LAYER_MODES else 0
    command = [
        str(args.alexnet_bin), "--precision", mode, "bench", "--json", "--device", args.device,
        "--arch", args.arch, "--seconds", str(args.seconds), "--layer-steps", str(layer_steps),
        "--train-batch", str(args.train_batch), "--infer-batch", str(args.infer_batch),
    ]
    log(f"ours {mode}: " + " ".join(command))
    finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(finished.stderr)
    tail = "\n".join(finished.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:])
    if finished.returncode != 0:
        return None, f"`{' '.join(command)}` failed (exit status {finished.returncode})\n{tail}".rstrip()
    try:
        return bench_pytorch.last_json_line(finished.stdout), None
    except (RuntimeError, ValueError) as e:
        return None, f"`{' '.join(command)}` printed no figures ({e})\n{tail}".rstrip()


def versions(device):
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, sm_{props.major}{props.minor}, {props.total_memory / GIB:.0f} GiB"
    else:
        gpu = f"none: PyTorch on {device} (a rehearsal, not a GPU's figures)"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda_torch_built_with": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def log(message):
    print(message, file=sys.stderr, flush=True)


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def ratio(mine, theirs):
    return "-" if mine is None or not theirs else f"{mine / theirs:.2f}x"


def print_table(meta, ours, errors, pytorch):
    """`ours` and `errors` map a mode to our figures or to what went wrong; a mode in neither was not run."""
    print(f"alexnet on the GPU beside PyTorch, eager and at its best: {meta['arch']}, {meta['seconds']:g} s per "
          f"measurement, {meta['date']}")
    print(f"  GPU: {meta['versions']['gpu']}")
    print(f"  PyTorch {meta['versions']['torch']} (CUDA {meta['versions']['cuda_torch_built_with']}, "
          f"cuDNN {meta['versions']['cudnn']}), cudnn.benchmark on")
    for mode in pytorch:
        if mode in ours:
            print(f"  ours, {mode}: {ours[mode].get('backend', '?')}")
        elif mode in errors:
            print(f"  ours, {mode}: FAILED (below)")
    if not ours and not errors:
        print("  ours: no figures")
    print()
    header = ("measurement", "alexnet (ours)", "PyTorch eager", "ours/eager", "PyTorch compiled",
              "PyTorch's best", "ours/best")
    body = []
    compile_notes = []
    for mode, figures in pytorch.items():
        mine = ours.get(mode) or {}
        failed = "FAILED" if mode in errors else None
        compiled = figures.get("compiled") or {}
        if "error" in compiled:
            compile_notes.append(f"  PyTorch compiled, {mode}: FAILED: {compiled['error']}")
        mine_t = next((t["images_per_s"] for t in mine.get("train", [])
                       if t.get("batch") == meta["train_batch"]), None)
        mine_i = (mine.get("inference") or {}).get("images_per_s")
        mine_b = (mine.get("train_stored") or {}).get("images_per_s")
        rows = [
            (f"training, batch {meta['train_batch']}, {mode} (images/s)", mine_t, "train"),
            ("  the same from stored bytes (images/s)", mine_b, "train_from_bytes"),
            (f"inference, batch {meta['infer_batch']}, {mode} (images/s)", mine_i, "inference"),
        ]
        for label, mine_rate, key in rows:
            eager = figures[key]["images_per_s"]
            fast = (compiled.get(key) or {}).get("images_per_s")
            best = max(eager, fast or 0.0)
            body.append((label, failed or fmt(mine_rate), fmt(eager), ratio(mine_rate, eager), fmt(fast),
                         fmt(best), ratio(mine_rate, best)))
            if (compiled.get(key) or {}).get("compile_s") is not None:
                compile_notes.append(f"  PyTorch compile time, {mode}, {key}: "
                                     f"{compiled[key]['compile_s']:.1f} s (first two steps, not counted)")
        if mine.get("latency_batch1_ms") is not None:
            body.append((f"latency, batch 1, {mode} (ms)", fmt(mine["latency_batch1_ms"], ".2f"), "-", "-",
                         "-", "-", "-"))
    bench_pytorch.print_columns(header, body)
    for note in compile_notes:
        print(note)
    for mode, error in errors.items():
        print(f"\n  ours, {mode}, FAILED: " + error.replace("\n", "\n    "))
    for mode in PER_LAYER_MODES:
        layers = (ours.get(mode) or {}).get("layers", [])
        if layers:
            print(f"\n  ours per layer, {mode}, training batch {meta['train_batch']} (ms): forward, backward")
        for layer in layers:
            print(f"    {layer['layer']:<22} {layer['forward_ms']:8.2f} {layer['backward_ms']:8.2f}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="alexnet", help="a preset name or the path of a TOML description")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement, after a warm-up")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--layer-steps", type=int, default=2,
                        help="training steps of our per-layer breakdown (fp32 and bf16 runs only)")
    parser.add_argument("--device", default="cuda:0", help="our --device")
    parser.add_argument("--alexnet-bin", type=Path, default=Path("gpu-bundle/alexnet"),
                        help="our binary, built with --features cuda")
    parser.add_argument("--no-ours", action="store_true", help="measure PyTorch only")
    parser.add_argument("--fp32-only", action="store_true",
                        help="skip the tf32 and bf16 runs (PyTorch's and ours)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip PyTorch's channels-last + torch.compile runs (eager only)")
    parser.add_argument("--json-out", metavar="FILE", help="also write all figures as JSON to FILE")
    parser.add_argument("--torch-device", default="cuda",
                        help="PyTorch's device (cpu: a rehearsal of the script without a GPU)")
    return parser.parse_args()


def main():
    args = parse_args()
    device = torch.device(args.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log("error: PyTorch sees no CUDA device (--torch-device cpu rehearses the script without one)")
        return 2
    if not args.no_ours and not args.alexnet_bin.is_file():
        log(f"error: {args.alexnet_bin} does not exist; build it with tools/build_gpu_bundle.sh or use --no-ours")
        return 2
    torch.backends.cudnn.benchmark = True
    meta = {
        "arch": args.arch, "seconds": args.seconds, "train_batch": args.train_batch,
        "infer_batch": args.infer_batch, "versions": versions(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    modes = ["fp32"] + ([] if args.fp32_only else ["tf32", "bf16"])
    pytorch = {}
    for mode in modes:
        pytorch[mode] = measure_mode(args, mode, compiled=False)
        if not args.no_compile:
            pytorch[mode]["compiled"] = measure_mode(args, mode, compiled=True)
    # Ours runs after PyTorch has released the GPU, so the two never share it: once per mode, each run on
    # its own whether or not another failed.
    ours, errors = {}, {}
    for mode in [] if args.no_ours else modes:
        figures, error = run_ours(args, mode)
        if error is None:
            ours[mode] = figures
        else:
            errors[mode] = error
            log(f"error: ours, {mode}: {error.splitlines()[0]}")
    print_table(meta, ours, errors, pytorch)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({**meta, "pytorch": pytorch, "ours": ours, "ours_errors": errors}, out, indent=2)
            out.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
