#!/usr/bin/env python3
"""Predicted data-parallel scaling of the paper's net: the tables of docs/scaling.md.

A paper model, not a measurement. It takes the net's parameter counts from the
preset (crates/alexnet/presets/alexnet.toml), one measured single-GPU training
step, the measured split of that step into forward, backward and SGD, per-layer
backward times, and assumed link figures, and prints Markdown tables of the
predicted efficiency of data-parallel training (gradients summed by ring
all-reduce in buckets, with and without overlap with the backward pass, in f32
or bf16) and of Krizhevsky's hybrid scheme ("One weird trick", 2014).

Standard library only. Every measured input is an option whose default names
its source, so the tables can be regenerated when a new measurement comes in:

    python3 tools/scaling_model.py                 # the tables in docs/scaling.md
    python3 tools/scaling_model.py --images-per-s 9457   # from the fp32 step
    python3 tools/scaling_model.py --help
"""

import argparse
import math
import os
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PRESET = os.path.join(HERE, "..", "crates", "alexnet", "presets", "alexnet.toml")

MB = 1e6  # bytes; link figures are in GB/s = 1e9 bytes/s

# Per-layer backward times at batch 128, fp32, one H200 (ms): BENCHMARKS.md, "CUDA",
# "After algorithm timing, new LRN/pooling kernels and staged uploads (22:47)",
# 2026-11-29, the only GPU table with every layer. Each layer's time includes the
# LRN+pooling backward before it where the table lists one (lrn+pool1 -> conv1,
# lrn+pool2 -> conv2). Used only as shares of the backward pass.
DEFAULT_LAYER_BACKWARD = "fc8=0.11,fc7=0.26,fc6=0.54,conv5=0.86,conv4=0.96,conv3=0.94,conv2=1.67,conv1=3.12"


# --------------------------------------------------------------------------- net

def layer_params(preset_path):
    """([(name, weights, biases, activation floats per image leaving the layer)] in forward order,
    forward multiply-adds per image)."""
    with open(preset_path, "rb") as f:
        spec = tomllib.load(f)
    c, h, w = spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"]
    out, macs = [], 0
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "conv":
            k, s, p, g = layer["kernel"], layer.get("stride", 1), layer.get("pad", 0), layer.get("groups", 1)
            n = layer["out"]
            weights = n * (c // g) * k * k
            h = (h + 2 * p - k) // s + 1
            w = (w + 2 * p - k) // s + 1
            c = n
            macs += weights * h * w
            out.append((layer["name"], weights, n, c * h * w))
        elif kind in ("max-pool", "avg-pool"):
            h = (h - layer["size"]) // layer["stride"] + 1
            w = (w - layer["size"]) // layer["stride"] + 1
            if out:  # the activation that leaves this stage is the pooled one
                name, wt, b, _ = out[-1]
                out[-1] = (name, wt, b, c * h * w)
        elif kind == "linear":
            n = layer.get("out") or spec["classes"]
            macs += c * h * w * n
            out.append((layer["name"], c * h * w * n, n, n))
            c, h, w = n, 1, 1
        # relu, lrn, dropout: no parameters, shape unchanged
    return out, macs


# ----------------------------------------------------------------------- links

class Link:
    def __init__(self, name, gbps, alpha_us):
        self.name, self.bw, self.alpha = name, gbps * 1e9, alpha_us * 1e-6

    def ring_allreduce(self, nbytes, n):
        """Ring all-reduce: 2(n-1)/n * bytes / bus bandwidth + 2(n-1) latency steps (seconds)."""
        if n <= 1:
            return 0.0
        return 2 * (n - 1) / n * nbytes / self.bw + 2 * (n - 1) * self.alpha

    def ring_gather(self, total_bytes, n):
        """Ring all-gather or reduce-scatter of total_bytes (each rank holds 1/n): (n-1)/n * bytes / bw."""
        if n <= 1:
            return 0.0
        return (n - 1) / n * total_bytes / self.bw + (n - 1) * self.alpha


def allreduce_time(nbytes, machines, gpus, nvlink, net, nics):
    """One bucket's all-reduce (s). One machine: ring over NVLink. Several: hierarchical --
    reduce-scatter over NVLink inside each machine, ring all-reduce of each GPU's 1/gpus shard
    across machines (the gpus rings share the machine's `nics` network ports), all-gather over
    NVLink. The three stages are summed (not pipelined): an upper bound by at most the NVLink terms."""
    if machines == 1:
        return nvlink.ring_allreduce(nbytes, gpus)
    t = 0.0
    if gpus > 1:
        t += 2 * nvlink.ring_gather(nbytes, gpus)
    share = nbytes / gpus                    # each GPU's shard
    per_port = share * gpus / min(nics, gpus)  # bytes through one port (shards share ports)
    t += 2 * (machines - 1) / machines * per_port / net.bw + 2 * (machines - 1) * net.alpha
    return t


# ------------------------------------------------------------------ step model

class Step:
    """The single-GPU training step, split into forward, backward (with per-layer
    shares) and the SGD update, and scaled to a per-GPU batch b."""

    def __init__(self, args, layers):
        self.t128 = 128 / args.images_per_s * 1e3  # ms
        phases = args.forward_ms + args.backward_ms + args.sgd_ms
        scale = self.t128 / phases  # measured step vs summed phases: shares kept, total = measured
        self.sgd = args.sgd_ms * scale
        self.fwd_share = args.forward_ms / (args.forward_ms + args.backward_ms)
        self.layer_bwd = {}
        for item in args.layer_backward.split(","):
            name, ms = item.split("=")
            self.layer_bwd[name.strip()] = float(ms)
        self.names_backward = [name for name, *_ in reversed(layers)]
        missing = [n for n in self.names_backward if n not in self.layer_bwd]
        if missing:
            sys.exit(f"--layer-backward lacks {missing}")
        self.bwd_total_shares = sum(self.layer_bwd[n] for n in self.names_backward)

    def compute(self, b):
        """Compute time (ms) of one step at per-GPU batch b: the SGD update is per step,
        forward and backward are taken as proportional to the batch (optimistic below 128)."""
        return self.sgd + (self.t128 - self.sgd) * b / 128

    def backward_ms(self, b):
        return (self.compute(b) - self.sgd) * (1 - self.fwd_share)

    def ready_times(self, b):
        """{layer: ms after the backward starts when its gradients are complete}."""
        bwd = self.backward_ms(b)
        t, ready = 0.0, {}
        for n in self.names_backward:
            t += bwd * self.layer_bwd[n] / self.bwd_total_shares
            ready[n] = t
        return ready


def buckets(layers, ready, cap_bytes, width, first_layer_alone):
    """[(bytes, ready ms)]: gradients in backward order; a bucket closes at a layer boundary
    once it holds at least cap_bytes and is then cut into equal pieces of at most cap_bytes
    (a piece is ready when its layer is). The net's first layer (the last gradient to be
    ready) goes alone if first_layer_alone, so the other small layers need not wait for it."""
    out, cur, cur_ready = [], 0, 0.0
    order = list(reversed(layers))
    for i, (name, wts, bias, _) in enumerate(order):
        last = i == len(order) - 1
        if last and first_layer_alone and cur:
            out.append((cur, cur_ready))
            cur = 0
        cur += (wts + bias) * width
        cur_ready = ready[name]
        if cur >= cap_bytes or last:
            pieces = max(1, math.ceil(cur / cap_bytes))
            out.extend([(cur / pieces, cur_ready)] * pieces)
            cur = 0
    return out


def exposed_ms(bks, backward_ms, overlap, cost):
    """Communication time left after the backward pass ends (ms). One stream: a bucket
    starts when it is ready (overlap) or when the backward pass ends (no overlap), and
    not before the previous bucket is done."""
    t = 0.0
    for nbytes, ready in bks:
        start = max(t, ready if overlap else backward_ms)
        t = start + cost(nbytes) * 1e3
    return max(0.0, t - backward_ms)


# ----------------------------------------------------------------------- tables

def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(x):
    return f"{100 * x:.0f}%"


def configs(args, nvlink, nets):
    """(label, machines, gpus per machine, network link or None)."""
    out = [(f"{n} GPUs, one machine, NVLink", 1, n, None) for n in (2, 4, 8)]
    for net in nets:
        out += [(f"{m} machines x 1 GPU, {net.name}", m, 1, net) for m in (2, 4, 8)]
    for net in nets:
        out += [(f"{m} machines x {args.gpus_per_machine} GPUs ({args.nics} port), {net.name}",
                 m, args.gpus_per_machine, net) for m in (2, 4, 8)]
    return out


def dp_row(step, layers, cfg, b, args, nvlink):
    label, machines, gpus, net = cfg
    n = machines * gpus
    ready = step.ready_times(b)
    bwd = step.backward_ms(b)
    comp = step.compute(b)
    res = {}
    for width, tag in ((4, "f32"), (2, "bf16")):
        bks = buckets(layers, ready, args.bucket_mb * MB, width, not args.no_first_layer_alone)
        cost = lambda nb: allreduce_time(nb, machines, gpus, nvlink, net, args.nics)
        total = sum(cost(nb) for nb, _ in bks) * 1e3
        for overlap in (False, True):
            exp = exposed_ms(bks, bwd, overlap, cost)
            res[(tag, overlap)] = (exp, comp / (comp + exp), comp + exp)
        res[(tag, "comm")] = total
    return n, comp, res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=DEFAULT_PRESET, help="net description (default: the paper's alexnet preset)")
    ap.add_argument("--images-per-s", type=float, default=11942,
                    help="measured single-GPU training images/s at batch 128 (default 11942: one H200, tf32, "
                         "BENCHMARKS.md 'CUDA', 2026-11-30 01:25; fp32 9457, bf16 10853)")
    ap.add_argument("--compare-images-per-s", default="fp32=9457,tf32=11942,bf16=10853",
                    help="steps for the sensitivity table (same run as --images-per-s)")
    ap.add_argument("--forward-ms", type=float, default=4.6,
                    help="measured forward phase (default 4.6: step_phases 128, fp32, H200, 2026-11-30 00:24)")
    ap.add_argument("--backward-ms", type=float, default=8.4, help="measured backward phase (default 8.4, same run)")
    ap.add_argument("--sgd-ms", type=float, default=0.4, help="measured SGD update (default 0.4, same run)")
    ap.add_argument("--layer-backward", default=DEFAULT_LAYER_BACKWARD,
                    help="per-layer backward ms, used as shares (default: BENCHMARKS.md 'CUDA', 22:47 table, fp32)")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="all-reduce bucket size (MB)")
    ap.add_argument("--no-first-layer-alone", action="store_true",
                    help="let conv1's tiny gradient share a bucket with conv2-conv5 (they then wait for it)")
    ap.add_argument("--nvlink-gbps", type=float, default=340.0,
                    help="NCCL all-reduce bus bandwidth inside an 8-GPU NVLink 4 / NVSwitch machine for ~25 MB "
                         "buckets (assumed; ring peak ~370 of 450 GB/s line rate, less for 25 MB messages)")
    ap.add_argument("--nvlink-alpha-us", type=float, default=1.0, help="latency per ring step over NVLink (us)")
    ap.add_argument("--eth-gbps", type=float, default=11.0,
                    help="100 Gb/s Ethernet achieved (assumed 88%% of 12.5 GB/s line rate)")
    ap.add_argument("--eth-alpha-us", type=float, default=15.0, help="latency per ring step over TCP (us)")
    ap.add_argument("--edr-gbps", type=float, default=11.5,
                    help="InfiniBand EDR 100 Gb/s achieved (assumed 92%% of 12.5 GB/s)")
    ap.add_argument("--hdr-gbps", type=float, default=23.0,
                    help="InfiniBand HDR 200 Gb/s achieved (assumed 92%% of 25 GB/s)")
    ap.add_argument("--ib-alpha-us", type=float, default=3.0, help="latency per ring step over InfiniBand (us)")
    ap.add_argument("--gpus-per-machine", type=int, default=8, help="GPUs per machine in the hierarchical rows")
    ap.add_argument("--nics", type=int, default=1, help="network ports per machine in the hierarchical rows")
    args = ap.parse_args()

    layers, macs = layer_params(args.preset)
    step = Step(args, layers)
    nvlink = Link("NVLink", args.nvlink_gbps, args.nvlink_alpha_us)
    nets = [Link("100GbE", args.eth_gbps, args.eth_alpha_us),
            Link("IB EDR", args.edr_gbps, args.ib_alpha_us),
            Link("IB HDR", args.hdr_gbps, args.ib_alpha_us)]

    # ---- inputs
    total = sum(w + b for _, w, b, _ in layers)
    fc = sum(w + b for n, w, b, _ in layers if n.startswith("fc"))
    print("### Inputs\n")
    rows = [(n, f"{w + b:,}", f"{(w + b) * 4 / MB:.2f}", f"{(w + b) * 2 / MB:.2f}", f"{a:,}") for n, w, b, a in layers]
    rows.append(("**total**", f"**{total:,}**", f"**{total * 4 / MB:.1f}**", f"**{total * 2 / MB:.1f}**", ""))
    print(md_table(["layer", "parameters", "f32 gradient MB", "bf16 MB", "activations per image out"], rows))
    ready = step.ready_times(128)
    bwd = step.backward_ms(128)
    fc_done = max(ready[n] for n, *_ in layers if n.startswith("fc"))
    print(f"\nFully connected layers: {fc:,} parameters, {100 * fc / total:.1f}% of the bytes.")
    print(f"Step at batch 128: {step.t128:.2f} ms ({args.images_per_s:g} images/s); of it, SGD "
          f"{step.sgd:.2f} ms, backward {bwd:.2f} ms. The fc gradients are complete {fc_done:.2f} ms into "
          f"the backward pass, leaving {bwd - fc_done:.2f} ms ({100 * (1 - fc_done / bwd):.0f}% of it) "
          f"to hide their all-reduce behind.")
    bks = buckets(layers, ready, args.bucket_mb * MB, 4, not args.no_first_layer_alone)
    print(f"Buckets (f32): {len(bks)}, " + ", ".join(f"{nb / MB:.1f} MB @ {r:.2f} ms" for nb, r in bks) + ".")
    print(f"Links (bus bandwidth, latency per ring step): NVLink {args.nvlink_gbps:g} GB/s, "
          f"{args.nvlink_alpha_us:g} us; " + "; ".join(f"{l.name} {l.bw / 1e9:g} GB/s, {l.alpha * 1e6:g} us"
                                                          for l in nets) + ".")

    # ---- weak and strong scaling
    for title, strong in (("Weak scaling: 128 images per GPU (global batch 128 x N)", False),
                          ("Strong scaling: global batch 128 (128/N images per GPU)", True)):
        print(f"\n### {title}\n")
        rows = []
        for cfg in configs(args, nvlink, nets):
            n = cfg[1] * cfg[2]
            b = 128 / n if strong else 128
            n, comp, res = dp_row(step, layers, cfg, b, args, nvlink)
            best = res[("bf16", True)]
            speed = step.t128 / best[2] if strong else n * step.t128 / best[2]
            rows.append((cfg[0], n, f"{comp:.2f}", f"{res[('f32', 'comm')]:.1f}",
                         pct(res[("f32", False)][1]), pct(res[("f32", True)][1]),
                         pct(res[("bf16", False)][1]), pct(res[("bf16", True)][1]), f"{speed:.1f}x"))
        print(md_table(["configuration", "GPUs", "compute ms", "all-reduce ms (f32)", "f32", "f32 overlap",
                        "bf16", "bf16 overlap", "speedup (bf16 overlap)"], rows))

    # ---- sensitivity to the measured step
    print("\n### Efficiency (bf16 gradients, overlap) against the measured step, weak scaling\n")
    picks = [c for c in configs(args, nvlink, nets)
             if (c[1], c[2]) in ((1, 8), (8, 1), (8, args.gpus_per_machine)) and (c[3] is None or c[3].name != "IB HDR")]
    header, rows = ["configuration"], []
    saved = args.images_per_s
    variants = [v.split("=") for v in args.compare_images_per_s.split(",")]
    for tag, ips in variants:
        header.append(f"{tag} step ({128 / float(ips) * 1e3:.1f} ms)")
    for cfg in picks:
        row = [cfg[0]]
        for tag, ips in variants:
            args.images_per_s = float(ips)
            _, _, res = dp_row(Step(args, layers), layers, cfg, 128, args, nvlink)
            row.append(pct(res[("bf16", True)][1]))
        rows.append(row)
    args.images_per_s = saved
    print(md_table(header, rows))

    # ---- hybrid: data-parallel convolutions, model-parallel fc layers
    conv_layers = [l for l in layers if not l[0].startswith("fc")]
    fc_layers = [l for l in layers if l[0].startswith("fc")]
    # floats per image crossing GPUs: the last conv output into fc6, and each fc output but the last
    # (fc8's logits need only a per-image max and sum for the softmax: 2 floats)
    boundary = [conv_layers[-1][3]] + [a for _, _, _, a in fc_layers[:-1]] + [2]
    per_image = sum(boundary)
    print("\n### Hybrid scheme (One weird trick): convolutions data-parallel, fc layers model-parallel\n")
    print(f"Floats per image exchanged at the fc boundaries: {' + '.join(f'{x:,}' for x in boundary)} = "
          f"{per_image:,}, each way (all-gather forward, reduce-scatter backward). Data parallelism moves "
          f"the fc gradients ({fc:,} values) instead: the hybrid moves fewer bytes while the global batch is "
          f"below {fc:,} / {per_image:,} = {fc / per_image:,.0f} images.\n")
    rows = []
    for cfg in configs(args, nvlink, nets):
        label, machines, gpus, net = cfg
        if machines > 1 and gpus > 1:
            continue  # hierarchical hybrid (model-parallel inside, data-parallel across): not modelled
        if machines * gpus == 4 or (machines == 1 and gpus < 8):
            continue  # 2 and 8 ranks only, to keep the table short
        n = machines * gpus
        link = nvlink if net is None else net
        for strong in (False, True):
            b = 128 / n if strong else 128
            comp = step.compute(b)
            ready = step.ready_times(b)
            _, _, dp = dp_row(step, layers, cfg, b, args, nvlink)
            cells = []
            for width in (4, 2):
                act = 2 * sum(link.ring_gather(n * b * f * width, n) for f in boundary) * 1e3
                conv_bks = buckets(conv_layers, ready, args.bucket_mb * MB, width,
                                   not args.no_first_layer_alone)
                cost = lambda nb: link.ring_allreduce(nb, n)
                exp_conv = exposed_ms(conv_bks, step.backward_ms(b), True, cost)
                exp = act + exp_conv  # activation exchanges on the critical path, not overlapped
                cells.append((act, comp / (comp + exp)))
            act_bytes = 2 * (n - 1) * b * per_image * 4  # sent per GPU: all-gathers plus reduce-scatters
            rows.append((label, "strong (128 total)" if strong else "weak (128 per GPU)",
                         f"{2 * (n - 1) / n * fc * 4 / MB:.0f} / {act_bytes / MB:.0f}",
                         pct(dp[("f32", True)][1]), pct(dp[("bf16", True)][1]),
                         pct(cells[0][1]), pct(cells[1][1])))
    print(md_table(["configuration", "scaling", "MB sent per GPU: fc gradients / fc activations (f32)",
                    "data-parallel f32 overlap", "data-parallel bf16 overlap", "hybrid f32", "hybrid bf16"],
                   rows))

    # ---- gradient bytes per unit of compute
    print("\n### Gradient bytes per unit of compute\n")
    gmac = macs / 1e9
    rows = [("this net (preset)", f"{total / 1e6:.1f}", f"{gmac:.2f}", f"{total * 4 / MB / gmac:.0f}")]
    for name, p, g in (("VGG-16", 138.4, 15.5), ("ResNet-101", 44.5, 7.8), ("ResNet-50", 25.6, 4.1)):
        rows.append((name, f"{p:.1f}", f"{g:.1f}", f"{p * 4 / g:.0f}"))
    print(md_table(["net", "parameters (M)", "forward multiply-adds per image (G)",
                    "f32 gradient MB per image-GMAC"], rows))


if __name__ == "__main__":
    main()
