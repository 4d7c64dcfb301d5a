#!/usr/bin/env python3
"""Training from a JPEG dataset on disk against the same step from stored bytes in memory.

Makes a folder of augmented views of the repository's photographs (the
`photo_dataset` example: 256x256 JPEGs at quality 90, mean size printed),
prepares it with `--encoding jpeg`, times `alexnet bench` (its training step at
--batch from stored bytes), then trains the paper's net from that dataset for
--epochs epochs and compares `train`'s images/s after the first epoch with the
bench's, printing how long each epoch waited for data and the projected time of
90 ImageNet epochs (1.28 M images each) at the measured rate.

    python3 tools/end_to_end.py --alexnet gpu-bundle/alexnet --photo-dataset gpu-bundle/photo_dataset \\
        --device cuda:0 [--precision bf16] [--images 20000]

Standard library only. Exits non-zero if a command fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGENET_IMAGES = 1_281_167
# The repository's photographs, from this checkout (the bundle was built elsewhere).
PHOTOS = Path(__file__).resolve().parents[1] / "crates" / "alexnet-data" / "tests" / "photos"


def run(*command):
    command = [str(c) for c in command]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alexnet", type=Path, required=True)
    parser.add_argument("--photo-dataset", type=Path, required=True, help="the photo_dataset example's binary")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loader-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--bench-seconds", type=float, default=5)
    parser.add_argument("--work", type=Path, help="a folder to work in (default: a temporary one)")
    args = parser.parse_args()
    holdout = 10 * args.batch
    if args.images < holdout + 2 * args.batch:
        parser.error(f"--images {args.images}: expected at least {holdout + 2 * args.batch} "
                     f"(a holdout of {holdout} and two batches to train on)")

    with tempfile.TemporaryDirectory(prefix="alexnet-e2e-", dir=args.work) as tmp:
        root = Path(tmp)
        photos = root / "photos"
        print(run(args.photo_dataset, photos, args.images, "--photos", PHOTOS).strip())
        data = root / "data"
        run(args.alexnet, "prepare", photos, "--encoding", "jpeg", "--out", data)
        # The images' shards alone (beside them, the mean image is 768 KB whatever the count).
        shards = sum(f.stat().st_size for f in data.rglob("*.shard"))
        print(f"prepared as JPEG: {shards / 1e6:.0f} MB of shards ({shards / args.images / 1e3:.1f} KB an image)")

        engine = ["--device", args.device, "--precision", args.precision]
        bench = json.loads(run(args.alexnet, "bench", "--arch", "alexnet", "--train-batch", args.batch,
                               "--infer-batch", 1, "--layer-steps", 0, "--seconds", args.bench_seconds,
                               "--json", *engine).strip().splitlines()[-1])
        memory_rate = bench["train_stored"]["images_per_s"]
        print(f"bench, training step at batch {args.batch} from stored bytes in memory: {memory_rate:.0f} images/s")

        out = root / "run"
        run(args.alexnet, "train", "--data", data, "--arch", "alexnet", "--batch", args.batch,
            "--epochs", args.epochs, "--holdout", holdout, "--loader-threads", args.loader_threads,
            "--log-every", 10, "--quiet", "--out", out, *engine)
        epochs = [l for l in metrics(out) if l.get("kind") == "epoch"]
        for line in epochs:
            print(f"epoch {line['epoch']}: {line['train_s']:.1f} s of steps, waited {line['data_wait_s']:.2f} s "
                  f"for data ({100 * line['data_wait_s'] / max(line['train_s'], 1e-9):.1f}%)")
        # The epochs after the first: their steps (waits for data included) over their time.
        later = [(line, line["step"] - before["step"]) for before, line in zip(epochs, epochs[1:])]
        seconds = sum(line["train_s"] for line, _ in later)
        if not later or seconds <= 0:
            raise SystemExit("FAILED: no epoch after the first was trained (more --epochs)")
        disk_rate = sum(steps for _, steps in later) * args.batch / seconds
        ratio = disk_rate / memory_rate
        print(f"train from the JPEG dataset after its first epoch ({args.loader_threads} loader threads): "
              f"{disk_rate:.0f} images/s, {100 * ratio:.0f}% of the bench's (aim: at least 90%)")
        hours = IMAGENET_IMAGES * 90 / disk_rate / 3600
        print(f"projected: 90 ImageNet epochs in {hours:.1f} hours at this rate (a projection, not a run)")


if __name__ == "__main__":
    sys.exit(main())
