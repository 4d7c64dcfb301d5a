#!/usr/bin/env python3
"""Writes the fixtures of the Caffe import (crates/alexnet-interop/tests/caffe.rs).

Caffe itself is not installable here, so the .caffemodel files are written by
this script: the protobuf wire format is encoded directly (varints, keys,
length-delimited fields, packed floats: a few lines below, no protobuf
package), with the field numbers of Caffe's src/caffe/proto/caffe.proto.
tools/caffe_subset.proto lists the same messages and numbers, so that protoc can
decode every file independently of our reader and of this writer:

    pip install grpcio-tools
    python -m grpc_tools.protoc -I tools --decode=caffe.NetParameter \\
        tools/caffe_subset.proto < fixtures/caffe-mini-alexnet.caffemodel

The nets are AlexNet-shaped but narrow (conv 8-12-16-16-12, fc 32-32-10; conv2,
conv4 and conv5 in two groups) on a 99x99 input chosen so that every pooling
window fits exactly (15 -> 7 -> 3 in the real net's 55 -> 27 -> 13 pattern:
here 23 -> 11 -> 5 -> 2), and pool5 leaves a 2x2 grid so that fc6's flattening
order matters. Images and the mean are stored at 112x112 (the real 256 for a
227 crop, scaled) and cropped at Caffe's offset (112 - 99) // 2 = 6.

Fixtures written:
  fixtures/caffe-mini-alexnet.caffemodel     current `layer` format, train_val
      style (two Data layers with crop_size, Accuracy, SoftmaxWithLoss), the
      paper's order conv -> relu -> lrn -> pool (bvlc_alexnet), blobs with `shape`
  fixtures/caffe-mini-caffenet.caffemodel    current format, deploy style (input +
      input_shape, Softmax), pool before norm (bvlc_reference_caffenet), its own
      weights, LRN with a non-default k
  fixtures/caffe-mini-alexnet-v1.caffemodel  the same net and weights as
      mini-alexnet in the V1 `layers` format (enum types, input_dim, old
      num/channels/height/width blob dims: an fc weight as 1x1xOUTxIN; one
      blob's floats unpacked)
  fixtures/caffe-mini-caffenet.prototxt      the caffenet fixture's net in the text
      format (an Input layer instead of input_shape), for the prototxt reader
  fixtures/caffe-mini-mean.binaryproto       a 3x112x112 BGR mean (BlobProto)
  fixtures/caffe-mini-reference.safetensors  images (u8, N x 3 x 112 x 112, BGR),
      mean (f32, BGR, as in the binaryproto), <net>.logits (f64, N x 10),
      <net>.conv1.weight (f32, as stored: input channels BGR)
  fixtures/caffe-corpus/*                    hostile and unsupported files (also
      the fuzz corpus); tests/caffe.rs lists what each must be refused for

Reference logits follow Caffe's conventions in PyTorch, float64 from the
float32 weights: BGR input minus the mean on the 0-255 scale, grouped
convolution, torch.nn.functional.local_response_norm (alpha divided by the
window size, as Caffe), max pooling with ceil_mode=True (Caffe's rounding),
dropout as the identity (test time).

Run: python3 tools/caffe_fixtures.py   (needs torch, numpy, safetensors)
"""

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CORPUS = FIXTURES / "caffe-corpus"

SIZE = 99  # the nets' input side (crop_size / input_dim)
STORED = 112  # images and mean, before the centre crop
OFFSET = (STORED - SIZE) // 2
IMAGES = 3
CLASSES = 10

# ---------------------------------------------------------------------------
# The protobuf wire format.


def varint(value):
    value &= (1 << 64) - 1  # negative int64: ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number, wire_type):
    return varint(number << 3 | wire_type)


def f_varint(number, value):
    return key(number, 0) + varint(int(value))


def f_bytes(number, payload):
    return key(number, 2) + varint(len(payload)) + payload


def f_str(number, text):
    return f_bytes(number, text.encode())


def f_float(number, value):
    return key(number, 5) + struct.pack("<f", value)


def f_packed_floats(number, values):
    return f_bytes(number, np.asarray(values, dtype="<f4").tobytes())


def f_unpacked_floats(number, values):
    return b"".join(f_float(number, float(v)) for v in np.asarray(values, dtype="<f4").ravel())


def f_packed_varints(number, values):
    return f_bytes(number, b"".join(varint(v) for v in values))


# ---------------------------------------------------------------------------
# Caffe messages (field numbers from caffe.proto; see caffe_subset.proto).


def blob_shape(dims):  # BlobShape
    return f_packed_varints(1, dims)


def blob(values, dims, legacy=False, unpacked=False):  # BlobProto
    """`dims` as declared; `legacy` writes num/channels/height/width (padded
    to four dims with leading 1s) instead of `shape`."""
    if legacy:
        four = [1] * (4 - len(dims)) + list(dims)
        head = b"".join(f_varint(n, d) for n, d in zip((1, 2, 3, 4), four))
    else:
        head = f_bytes(7, blob_shape(dims))
    data = f_unpacked_floats(5, values) if unpacked else f_packed_floats(5, values)
    return head + data


def filler(kind, std=None):  # FillerParameter: type=1 std=6
    return f_str(1, kind) + (f_float(6, std) if std is not None else b"")


def conv_param(p):  # ConvolutionParameter
    out = f_varint(1, p["out"]) + f_varint(4, p["kernel"])
    if p.get("pad", 0):
        out += f_varint(3, p["pad"])
    if p.get("stride", 1) != 1:
        out += f_varint(6, p["stride"])
    if p.get("groups", 1) != 1:
        out += f_varint(5, p["groups"])
    return out + f_bytes(7, filler("gaussian", 0.01)) + f_bytes(8, filler("constant"))


def ip_param(p):  # InnerProductParameter
    return f_varint(1, p["out"]) + f_bytes(3, filler("gaussian", 0.005))


def lrn_param(p):  # LRNParameter
    out = f_varint(1, p["size"]) + f_float(2, p["alpha"]) + f_float(3, p["beta"])
    if "k" in p:
        out += f_float(5, p["k"])
    if "norm_region" in p:
        out += f_varint(4, p["norm_region"])
    return out


def pool_param(p):  # PoolingParameter
    out = f_varint(1, 0) + f_varint(2, p["size"]) + f_varint(3, p["stride"])
    if p.get("pad", 0):
        out += f_varint(4, p["pad"])
    return out


# Per layer kind: the current `type` string and the V1 LayerType enum value.
TYPES = {
    "conv": ("Convolution", 4),
    "relu": ("ReLU", 18),
    "lrn": ("LRN", 15),
    "pool": ("Pooling", 17),
    "fc": ("InnerProduct", 14),
    "dropout": ("Dropout", 6),
    "data": ("Data", 5),
    "softmax": ("Softmax", 20),
    "loss": ("SoftmaxWithLoss", 21),
    "accuracy": ("Accuracy", 1),
}

# Field numbers of LayerParameter (current) and V1LayerParameter.
CURRENT = dict(name=1, type=2, bottom=3, top=4, blobs=7, include=8, transform=100,
               conv=106, data=107, dropout=108, ip=117, lrn=118, pool=121)
V1 = dict(name=4, type=5, bottom=2, top=3, blobs=6, include=32, transform=36,
          conv=10, data=11, dropout=12, ip=17, lrn=18, pool=19)


def layer(fields, kind, name, bottoms, tops, params=b"", blobs=(), include=None, extra=b""):
    v1 = fields is V1
    type_name, type_code = TYPES[kind]
    out = f_str(fields["name"], name)
    out += f_varint(fields["type"], type_code) if v1 else f_str(fields["type"], type_name)
    out += b"".join(f_str(fields["bottom"], b) for b in bottoms)
    out += b"".join(f_str(fields["top"], t) for t in tops)
    if include is not None:
        out += f_bytes(fields["include"], f_varint(1, include))  # NetStateRule phase
    if kind in ("conv", "fc"):
        if v1:  # blobs_lr=7, weight_decay=8 (unpacked floats, as old Caffe wrote them)
            out += f_float(7, 1.0) + f_float(7, 2.0) + f_float(8, 1.0) + f_float(8, 0.0)
        else:  # param=6: ParamSpec lr_mult=3 decay_mult=4
            out += f_bytes(6, f_float(3, 1.0) + f_float(4, 1.0))
            out += f_bytes(6, f_float(3, 2.0) + f_float(4, 0.0))
    out += params + extra
    out += b"".join(f_bytes(fields["blobs"], b) for b in blobs)
    return out


# ---------------------------------------------------------------------------
# The nets.

CONVS = [
    dict(name="conv1", out=8, kernel=11, stride=4),
    dict(name="conv2", out=12, kernel=5, pad=2, groups=2),
    dict(name="conv3", out=16, kernel=3, pad=1),
    dict(name="conv4", out=16, kernel=3, pad=1, groups=2),
    dict(name="conv5", out=12, kernel=3, pad=1, groups=2),
]
FCS = [dict(name="fc6", out=32), dict(name="fc7", out=32), dict(name="fc8", out=CLASSES)]
POOL = dict(size=3, stride=2)


def make_weights(seed, fc6_inputs):
    """Caffe-layout float32 weights: conv [out, in/groups, k, k], fc [out, in]."""
    rng = np.random.default_rng(seed)
    weights, channels = {}, 3
    for c in CONVS:
        fan_in = channels // c.get("groups", 1) * c["kernel"] ** 2
        shape = (c["out"], channels // c.get("groups", 1), c["kernel"], c["kernel"])
        # He-like scale so that activations stay on the 0-255 input's scale
        # and the LRN's normaliser departs clearly from k.
        weights[c["name"]] = (
            (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            (rng.standard_normal(c["out"]) * 2.0).astype(np.float32),
        )
        channels = c["out"]
    inputs = fc6_inputs
    for f in FCS:
        scale = np.sqrt(2.0 / inputs) if f["name"] != "fc8" else np.sqrt(1.0 / inputs)
        weights[f["name"]] = (
            (rng.standard_normal((f["out"], inputs)) * scale).astype(np.float32),
            (rng.standard_normal(f["out"]) * 0.5).astype(np.float32),
        )
        inputs = f["out"]
    return weights


def net_layers(order, lrn, weights, fields, legacy=False, overrides=None):
    """The computing layers, in Caffe's encoding. `order` is "norm-pool"
    (bvlc_alexnet) or "pool-norm" (caffenet). `overrides` replaces a layer's
    blobs or parameters (hostile fixtures)."""
    overrides = overrides or {}
    out, bottom = [], "data"

    def add(kind, name, params=b"", blobs=(), top=None):
        nonlocal bottom
        top = top or name
        out.append(layer(fields, kind, name, [bottom], [top], params, blobs))
        bottom = top

    def blobs_of(name):
        if name in overrides and "blobs" in overrides[name]:
            return overrides[name]["blobs"]
        w, b = weights[name]
        wdims = w.shape
        return [
            blob(w.ravel(), wdims, legacy),
            blob(b, b.shape, legacy, unpacked=legacy and name == "fc8"),
        ]

    for i, c in enumerate(CONVS, start=1):
        params = f_bytes(fields["conv"], conv_param(c))
        add("conv", c["name"], params, blobs_of(c["name"]))
        conv_top = bottom
        add("relu", f"relu{i}", top=conv_top)  # in place, as Caffe's nets
        norm = f_bytes(fields["lrn"], lrn_param(overrides.get(f"norm{i}", lrn)))
        pool = f_bytes(fields["pool"], pool_param(overrides.get(f"pool{i}", POOL)))
        if i in (1, 2):
            if order == "norm-pool":
                add("lrn", f"norm{i}", norm)
                add("pool", f"pool{i}", pool)
            else:
                add("pool", f"pool{i}", pool)
                add("lrn", f"norm{i}", norm)
        elif i == 5:
            add("pool", "pool5", pool)
    for i, f in enumerate(FCS, start=6):
        add("fc", f["name"], f_bytes(fields["ip"], ip_param(f)), blobs_of(f["name"]))
        if f["name"] != "fc8":
            fc_top = bottom
            add("relu", f"relu{i}", top=fc_top)
            add("dropout", f"drop{i}", f_bytes(fields["dropout"], f_float(1, 0.5)), top=fc_top)
    return out


def train_val_net(name, body):
    """Current format as in a train_val.prototxt: TRAIN and TEST data layers
    with a crop, then the body, accuracy and loss."""
    data = []
    for phase, mirror in ((0, 1), (1, 0)):
        transform = f_varint(2, mirror) + f_varint(3, SIZE) + f_str(4, "imagenet_mean.binaryproto")
        source = f_str(1, "ilsvrc12_train_lmdb" if phase == 0 else "ilsvrc12_val_lmdb")
        params = f_bytes(CURRENT["transform"], transform) + f_bytes(
            CURRENT["data"], source + f_varint(4, 256 if phase == 0 else 50) + f_varint(8, 1)
        )
        data.append(layer(CURRENT, "data", "data", [], ["data", "label"], params, include=phase))
    tail = [
        layer(CURRENT, "accuracy", "accuracy", ["fc8", "label"], ["accuracy"], include=1),
        layer(CURRENT, "loss", "loss", ["fc8", "label"], ["loss"]),
    ]
    return f_str(1, name) + b"".join(f_bytes(100, l) for l in data + body + tail)


def deploy_net(name, body, fields, side=SIZE):
    """A deploy-style net: a declared input, the body and a softmax. V1 nets
    give the input as input_dim, current ones as input_shape."""
    head = f_str(1, name) + f_str(3, "data")
    if fields is V1:
        head += b"".join(f_varint(4, d) for d in (10, 3, side, side))
    else:
        head += f_bytes(8, blob_shape([10, 3, side, side]))
    prob = layer(fields, "softmax", "prob", ["fc8"], ["prob"])
    number = 2 if fields is V1 else 100
    return head + b"".join(f_bytes(number, l) for l in body + [prob])


# ---------------------------------------------------------------------------
# Reference outputs, following Caffe's conventions.


def caffe_forward(x, order, lrn, weights):
    """`x`: float64 BGR images minus the mean, N x 3 x SIZE x SIZE."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))
    for i, c in enumerate(CONVS, start=1):
        w, b = weights[c["name"]]
        x = F.conv2d(x, t(w), t(b), stride=c.get("stride", 1), padding=c.get("pad", 0),
                     groups=c.get("groups", 1))
        x = F.relu(x)
        norm = lambda y: F.local_response_norm(y, lrn["size"], lrn["alpha"], lrn["beta"],
                                               lrn.get("k", 1.0))
        pool = lambda y: F.max_pool2d(y, POOL["size"], POOL["stride"], ceil_mode=True)
        if i in (1, 2):
            x = pool(norm(x)) if order == "norm-pool" else norm(pool(x))
        elif i == 5:
            x = pool(x)
    x = x.flatten(1)
    for f in FCS:
        w, b = weights[f["name"]]
        x = F.linear(x, t(w), t(b))
        if f["name"] != "fc8":
            x = F.relu(x)
    return x


def pool5_side(side):
    for c in CONVS:
        side = (side + 2 * c.get("pad", 0) - c["kernel"]) // c.get("stride", 1) + 1
        if c["name"] in ("conv1", "conv2", "conv5"):
            side = -(-(side - POOL["size"]) // POOL["stride"]) + 1
    return side


def main():
    FIXTURES.mkdir(exist_ok=True)
    CORPUS.mkdir(exist_ok=True)
    rng = np.random.default_rng(2012)
    fc6_inputs = CONVS[-1]["out"] * pool5_side(SIZE) ** 2
    assert pool5_side(SIZE) == 2, pool5_side(SIZE)

    # Images: smooth colour fields plus noise, BGR, 0-255.
    coarse = rng.uniform(0, 255, size=(IMAGES, 3, 8, 8))
    smooth = np.kron(coarse, np.ones((1, 1, 14, 14)))
    images = np.clip(smooth + rng.normal(0, 30, size=smooth.shape), 0, 255).round().astype(np.uint8)
    # A mean image around Caffe's ImageNet BGR mean, with structure and fractions.
    ramp = np.linspace(-12, 12, STORED)
    mean = np.stack([
        104.0 + ramp[None, :] + 0 * ramp[:, None],
        117.0 + ramp[:, None] + 0 * ramp[None, :],
        123.0 - ramp[None, :] * 0.5 + ramp[:, None] * 0.5,
    ]) + rng.normal(0, 2, size=(3, STORED, STORED))
    mean = mean.astype(np.float32)

    x = torch.from_numpy(images.astype(np.float64) - mean.astype(np.float64))
    x = x[:, :, OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]

    nets = {
        "alexnet": dict(order="norm-pool", lrn=dict(size=5, alpha=1e-4, beta=0.75),
                        weights=make_weights(1, fc6_inputs)),
        "caffenet": dict(order="pool-norm", lrn=dict(size=5, alpha=5e-4, beta=0.75, k=2.0),
                         weights=make_weights(2, fc6_inputs)),
    }
    tensors = {"images": images, "mean": mean}
    for key_, net in nets.items():
        logits = caffe_forward(x, net["order"], net["lrn"], net["weights"])
        tensors[f"{key_}.logits"] = logits.numpy()
        tensors[f"{key_}.conv1.weight"] = net["weights"]["conv1"][0]  # as stored: BGR
        report_sensitivity(key_, x, net, logits)

    a, c = nets["alexnet"], nets["caffenet"]
    alexnet = train_val_net("AlexNet", net_layers(a["order"], a["lrn"], a["weights"], CURRENT))
    caffenet = deploy_net("CaffeNet", net_layers(c["order"], c["lrn"], c["weights"], CURRENT), CURRENT)
    alexnet_v1 = deploy_net(
        "AlexNet", net_layers(a["order"], a["lrn"], a["weights"], V1, legacy=True), V1
    )
    mean_proto = blob(mean.ravel(), (1, 3, STORED, STORED), legacy=True)
    write(FIXTURES / "caffe-mini-caffenet.prototxt", prototxt("CaffeNet", c["order"], c["lrn"]).encode())
    write(FIXTURES / "caffe-mini-alexnet.caffemodel", alexnet)
    write(FIXTURES / "caffe-mini-caffenet.caffemodel", caffenet)
    write(FIXTURES / "caffe-mini-alexnet-v1.caffemodel", alexnet_v1)
    write(FIXTURES / "caffe-mini-mean.binaryproto", mean_proto)
    save_file(tensors, str(FIXTURES / "caffe-mini-reference.safetensors"))
    print(f"wrote {FIXTURES / 'caffe-mini-reference.safetensors'}")

    write_corpus(alexnet, mean_proto, c)


def report_sensitivity(name, x, net, logits):
    """How far the logits move under each convention the import converts: each
    must be far above the tests' 1e-4 tolerance for the fixture to catch it."""
    def rel(other):
        return float((other - logits).abs().max() / logits.abs().max())
    w = net["weights"]
    undivided = dict(net["lrn"], alpha=net["lrn"]["alpha"] * net["lrn"]["size"])
    rgb = dict(w, conv1=(w["conv1"][0][:, ::-1].copy(), w["conv1"][1]))
    print(f"{name}: alpha not divided by n moves the logits by {rel(caffe_forward(x, net['order'], undivided, w)):.2e}; "
          f"BGR read as RGB by {rel(caffe_forward(x, net['order'], net['lrn'], rgb)):.2e}")


def prototxt(name, order, lrn):
    """The deploy net of `net_layers` in Caffe's text format (current layers,
    an Input layer): the same description as the binary files, for the
    prototxt reader."""
    out, bottom = [f'name: "{name}"',
                   'layer { name: "data" type: "Input" top: "data"',
                   f'  input_param {{ shape {{ dim: 10 dim: 3 dim: {SIZE} dim: {SIZE} }} }} }}'], "data"

    def add(kind, name, params="", top=None):
        nonlocal bottom
        top = top or name
        out.append(f'layer {{ name: "{name}" type: "{TYPES[kind][0]}" bottom: "{bottom}" top: "{top}"')
        if params:
            out.append(f"  {params}")
        out.append("}")
        bottom = top

    norm = (f"lrn_param {{ local_size: {lrn['size']} alpha: {lrn['alpha']} beta: {lrn['beta']}"
            + (f" k: {lrn['k']}" if "k" in lrn else "") + " }")
    pool = f"pooling_param {{ pool: MAX kernel_size: {POOL['size']} stride: {POOL['stride']} }}"
    for i, c in enumerate(CONVS, start=1):
        conv = f"convolution_param {{ num_output: {c['out']} kernel_size: {c['kernel']}"
        conv += f" stride: {c.get('stride', 1)} pad: {c.get('pad', 0)} group: {c.get('groups', 1)} }}"
        add("conv", c["name"], conv)
        add("relu", f"relu{i}", top=bottom)
        if i in (1, 2):
            steps = [("lrn", f"norm{i}", norm), ("pool", f"pool{i}", pool)]
            for kind, layer_name, params in steps if order == "norm-pool" else steps[::-1]:
                add(kind, layer_name, params)
        elif i == 5:
            add("pool", "pool5", pool)
    for i, f in enumerate(FCS, start=6):
        add("fc", f["name"], f"inner_product_param {{ num_output: {f['out']} }}")
        if f["name"] != "fc8":
            add("relu", f"relu{i}", top=bottom)
            add("dropout", f"drop{i}", "dropout_param { dropout_ratio: 0.5 }", top=bottom)
    add("softmax", "prob")
    return "\n".join(out) + "\n"


def write(path, data):
    path.write_bytes(data)
    print(f"wrote {path} ({len(data)} bytes)")


def deep_nesting(levels):
    """A NetParameter whose first `layer` holds field 100 inside field 100 ...
    `levels` deep."""
    inner = b""
    for _ in range(levels):
        inner = f_bytes(100, inner)
    return f_str(1, "deep") + inner


def write_corpus(alexnet, mean_proto, caffenet):
    """Hostile and unsupported inputs; tests/caffe.rs says what each must be
    refused for."""
    w, order, lrn = caffenet["weights"], caffenet["order"], caffenet["lrn"]

    def variant(overrides=None, side=SIZE):
        return deploy_net("CaffeNet", net_layers(order, lrn, w, CURRENT, overrides=overrides),
                          CURRENT, side)

    w2, b2 = w["conv2"]
    # conv2 stored as if it read all 8 channels (no groups): count consistent, shape wrong.
    wrong = np.zeros((12, 8, 5, 5), dtype=np.float32)
    # A blob declaring 2^40 floats while holding 16.
    huge_dims = blob(np.zeros(16, dtype=np.float32), (1 << 20, 1 << 20))
    # A packed data field whose length says 2^40 bytes.
    huge_len = f_bytes(7, blob_shape(w2.shape)) + key(5, 2) + varint(1 << 40) + b"\0" * 64
    corpus = {
        "truncated.caffemodel": alexnet[: len(alexnet) // 2],
        "huge-blob-shape.caffemodel": variant({"conv1": {"blobs": [huge_dims, blob(b2, b2.shape)]}}),
        "huge-blob-length.caffemodel": variant({"conv2": {"blobs": [huge_len, blob(b2, b2.shape)]}}),
        "deep-nesting.caffemodel": deep_nesting(5000),
        "wrong-blob-shape.caffemodel": variant(
            {"conv2": {"blobs": [blob(wrong.ravel(), wrong.shape), blob(b2, b2.shape)]}}),
        "missing-bias.caffemodel": variant({"fc7": {"blobs": [blob(w["fc7"][0].ravel(), w["fc7"][0].shape)]}}),
        "within-channel-lrn.caffemodel": variant({"norm1": dict(lrn, norm_region=1)}),
        "padded-pool.caffemodel": variant({"pool2": dict(POOL, pad=1)}),
        # 103: conv1 gives 24x24, where 3/2 pooling is 12 wide in Caffe, 11 here.
        "ceil-pool.caffemodel": variant(side=103),
        "prototxt-text.caffemodel": b'name: "AlexNet"\nlayer {\n  name: "data"\n  type: "Input"\n}\n',
        "truncated-mean.binaryproto": mean_proto[:4000],
    }
    for name, data in corpus.items():
        write(CORPUS / name, data)


if __name__ == "__main__":
    main()
