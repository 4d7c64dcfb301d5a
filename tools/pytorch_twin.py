"""Writes the fixtures that show the Rust engine computes what PyTorch computes:
fixtures/twin-<net>.safetensors for a few small nets that between them use
every kind of layer (grouped convolutions, ReLU, tanh, LRN per tower and across
all channels, max and average pooling, dropout, linear layers), with the
logits, loss and gradients of a training step and the weights and velocities
after five steps of the paper's SGD. crates/alexnet/tests/pytorch_fixtures.rs
replays the same steps on both CPU backends and compares.

Precision: the starting weights, input and dropout masks are float32 values
(what the engine holds), but PyTorch runs the steps in float64 from them. The
reference is then the exact value of what the engine computes (to float64
rounding), so the test measures the engine's own float32 error rather than that
error mixed with PyTorch's. The same steps are also run in float32 PyTorch and
its distance from float64 is stored (metadata `torch_float32_max_rel_err`) and
printed: it is the error an equally careful float32 implementation makes, the
yardstick for the engine's.

Usage: python3 tools/pytorch_twin.py [--out DIR] [NET ...]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import pathlib
import sys
import tomllib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_nets import REPO_ROOT, Net, as_f32, load_spec, paper_sgd_step  # noqa: E402

BATCH = 4
STEPS = 5
SEED = 2012
LEARNING_RATE = 0.01
MOMENTUM = 0.9


def set_layer(spec: dict, name: str, **fields) -> None:
    for layer in spec["layers"]:
        if layer.get("name") == name:
            layer.update(fields)
            return
    raise KeyError(name)


def recipe(weight_decay: float, learning_rate: float = LEARNING_RATE) -> dict:
    return {
        "batch": BATCH,
        "learning_rate": learning_rate,
        "momentum": MOMENTUM,
        "weight_decay": weight_decay,
        "epochs": 1,
        "lr_drops": 0,
        "lr_drop_factor": 0.1,
    }


def mini(preset: str, name: str, **input_fields) -> dict:
    """The preset `preset` renamed `name`, for 10 classes of 3x67x67 images (and the
    `input_fields`), with the twin's recipe."""
    spec = copy.deepcopy(load_spec(preset))
    spec["name"] = name
    spec["classes"] = 10
    spec["input"].update(channels=3, height=67, width=67, **input_fields)
    spec["recipe"] = recipe(0.0005)
    return spec


def narrowed(spec: dict, widths: dict, stds: dict, **init) -> dict:
    """`spec` with each layer of `widths` that many outputs wide, then each layer of
    `stds` initialised with that spread (and the fields `init`)."""
    for name, out in widths.items():
        set_layer(spec, name, out=out)
    for name, std in stds.items():
        set_layer(spec, name, init_std=std, **init)
    return spec


def paper_mini() -> dict:
    """The paper's net (alexnet.toml) with its kernel sizes, strides, pads, groups,
    per-tower LRN, dropout and bias-1 layers, but narrow, on 67x67 images.

    The weights' spreads are chosen for the paper's pixel scale so that every layer's
    output is a few units to a few tens (neither vanishing nor saturating the
    softmax), so that k + alpha * sum a^2 in both LRN layers differs from k by a
    good fraction (about 18% and 12% on average, up to 180% and 80%), and so that no
    layer's weights move by more than a few percent in a step of the paper's SGD:
    with the paper's 0.01 everywhere, conv1's outputs are too small for LRN to
    matter and the later layers see little but their biases of 1.
    """
    spec = mini("alexnet", "paper-mini")
    widths = {"conv1": 16, "conv2": 32, "conv3": 48, "conv4": 48, "conv5": 32, "fc6": 64, "fc7": 64}
    stds = {
        "conv1": 0.03,
        "conv2": 0.08,
        "conv3": 0.03,
        "conv4": 0.05,
        "conv5": 0.08,
        "fc6": 0.05,
        "fc7": 0.05,
        "fc8": 0.05,
    }
    return narrowed(spec, widths, stds)


def owt_mini() -> dict:
    """torchvision's one-tower layout (alexnet-owt.toml): no LRN, no groups, dropout
    before fc6 and fc7, narrow, on 67x67 images. It is fed the same raw pixel scale
    as the others (its description says so), since the twin checks the layers, not
    torchvision's input convention. Biases start at 0.1 rather than 0 so that the
    first forward pass already adds them.
    """
    spec = mini("alexnet-owt", "owt-mini", pixels="raw-minus-mean")
    widths = {"conv1": 16, "conv2": 24, "conv3": 32, "conv4": 32, "conv5": 24, "fc6": 64, "fc7": 64}
    stds = {
        "conv1": 0.01,
        "conv2": 0.02,
        "conv3": 0.03,
        "conv4": 0.05,
        "conv5": 0.05,
        "fc6": 0.1,
        "fc7": 0.1,
        "fc8": 0.1,
    }
    return narrowed(spec, widths, stds, bias_init=0.1)


def cifar_tanh() -> dict:
    """The cifar preset on 1x28x28 images with tanh in place of every ReLU: tanh,
    average pooling and LRN across all channels (size 3, k 1).

    tanh keeps |a| below 1, so with the preset's alpha = 5e-5 the LRN term
    alpha * sum a^2 could never exceed 1.5e-4 of k and LRN would be the identity
    to test precision; alpha is raised to 0.25 so that it is about a third of k.
    The preset's conv1 spread (1e-4) would keep tanh in its linear part; the
    spreads here put its inputs at about one unit. The steps use the preset's own
    recipe (learning rate 0.001, weight decay 0.004), which also checks that the
    engine takes these from the caller: at 0.01, conv1's small weights (against
    raw pixels) would more than double in one step and saturate tanh.
    """
    spec = copy.deepcopy(load_spec("cifar"))
    spec["name"] = "cifar-tanh"
    spec["input"].update(channels=1, height=28, width=28)
    spec["recipe"] = recipe(spec["recipe"]["weight_decay"], spec["recipe"]["learning_rate"])
    for layer in spec["layers"]:
        if layer["type"] == "relu":
            layer["type"] = "tanh"
        if layer["type"] == "lrn":
            layer["alpha"] = 0.25
    stds = {"conv1": 0.004, "conv2": 0.06, "conv3": 0.06, "fc10": 0.15}
    for name, std in stds.items():
        set_layer(spec, name, init_std=std)
    set_layer(spec, "conv2", bias_init=0.1)
    return spec


NETS = {"paper-mini": paper_mini, "owt-mini": owt_mini, "cifar-tanh": cifar_tanh}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr gives the shortest text that reads back as the same double, and
        # always with a '.' or an exponent, so TOML reads it as a float.
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(spec: dict, comment: str) -> str:
    lines = [f"# {line}" for line in comment.strip().splitlines()]
    for key in ("name", "classes"):
        lines.append(f"{key} = {toml_value(spec[key])}")
    for table in ("input", "recipe"):
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in spec[table].items()]
    for layer in spec["layers"]:
        lines += ["", "[[layers]]", f"type = {toml_value(layer['type'])}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in layer.items() if k != "type"]
    return "\n".join(lines) + "\n"


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max|ours - theirs| / max|theirs|, the measure the Rust test applies."""
    scale = theirs.abs().max().item()
    return (ours.double() - theirs.double()).abs().max().item() / max(scale, 1e-30)


def lrn_term_fractions(net: Net, trace: list) -> list[tuple[float, float]]:
    """For each LRN layer, the mean and largest alpha * sum a^2 over k."""
    fractions = []
    lrns = iter(s for kind, s in net.layers if kind == "lrn")
    for i, (kind, _) in enumerate(trace):
        if kind != "lrn":
            continue
        s = next(lrns)
        a = trace[i - 1][1].detach()
        blocks = (a * a).chunk(s["groups"], dim=1)
        half = s["size"] // 2
        sums = torch.cat(
            [
                F.avg_pool3d(F.pad(b.unsqueeze(1), (0, 0, 0, 0, half, half)), (s["size"], 1, 1), stride=1).squeeze(1)
                * s["size"]
                for b in blocks
            ],
            dim=1,
        )
        term = s["alpha"] * sums / s["k"]
        fractions.append((term.mean().item(), term.max().item()))
    return fractions


def save_sorted(tensors: dict[str, np.ndarray], path: pathlib.Path, metadata: dict[str, str]) -> None:
    """Writes a safetensors file with its header's keys in sorted order.

    safetensors' own writer orders the metadata through a hash map, differently
    on every run, so regenerating unchanged fixtures would still change their
    bytes; this writer makes a rerun leave the committed files untouched. The
    file is read back with the library to make sure it is valid.
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    # The format pads the header with spaces to a multiple of 8 bytes, so the data that follows is aligned.
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4").tobytes())
    with safe_open(str(path), "np") as check:
        assert check.metadata() == metadata, path
        for name, array in tensors.items():
            assert np.array_equal(check.get_tensor(name), array), (path, name)


def file_sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_fixture(name: str, out_dir: pathlib.Path) -> pathlib.Path:
    spec_dict = NETS[name]()
    text = to_toml(
        spec_dict,
        f"{name}: written by tools/pytorch_twin.py for the PyTorch twin fixtures.\n"
        "Input on the paper's pixel scale (uniform in [-128, 128]).",
    )
    # The net is built from the text stored in the fixture, not from the dict it came from.
    spec = tomllib.loads(text)
    lr, momentum = as_f32(spec["recipe"]["learning_rate"]), as_f32(spec["recipe"]["momentum"])
    weight_decay = as_f32(spec["recipe"]["weight_decay"])

    generator = torch.Generator().manual_seed(SEED)
    net32 = Net(spec)
    net32.init_paper(generator)
    net64 = copy.deepcopy(net32).double()
    images = torch.rand((BATCH, *net32.input_shape), generator=generator) * 256.0 - 128.0
    labels = torch.randint(0, net32.classes, (BATCH,), generator=generator)
    net32.train()
    net64.train()

    tensors: dict[str, np.ndarray] = {
        "input": images.numpy(),
        "labels": labels.to(torch.float32).numpy(),
    }
    for pname, p in net32.named_tensors().items():
        tensors[f"param.{pname}"] = p.detach().numpy().copy()

    vel32: dict = {}
    vel64: dict = {}
    torch_err = {"logits": 0.0, "loss": 0.0, "grad": 0.0, "final": 0.0, "velocity": 0.0}
    losses = []
    for step in range(STEPS):
        masks = []
        for k, (length, p) in enumerate(
            zip(net32.dropout_lens, [s["p"] for kind, s in net32.layers if kind == "dropout"])
        ):
            keep = np.float32(1.0) / (np.float32(1.0) - np.float32(p))
            drawn = torch.bernoulli(torch.full((BATCH, length), 1.0 - p), generator=generator)
            mask = drawn * float(keep)
            masks.append(mask)
            tensors[f"mask.{step}.{k}"] = mask.numpy()

        trace: list = []
        results = {}
        for net, vel, x in ((net32, vel32, images), (net64, vel64, images.double())):
            net.zero_grad()
            logits = net(x, masks=masks, trace=trace if net is net64 else None)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            results[net is net64] = (
                logits.detach().clone(),
                loss.detach().clone(),
                {n: p.grad.clone() for n, p in net.named_tensors().items()},
            )
            paper_sgd_step(net, lr, momentum, weight_decay, vel)
        (l32, loss32, g32), (l64, loss64, g64) = results[False], results[True]

        tensors[f"loss.{step}"] = loss64.reshape(1).to(torch.float32).numpy()
        torch_err["loss"] = max(torch_err["loss"], rel_err(loss32, loss64))
        losses.append(loss64.item())
        if step == 0:
            tensors["logits"] = l64.to(torch.float32).numpy()
            torch_err["logits"] = rel_err(l32, l64)
            for pname in g64:
                tensors[f"grad.{pname}"] = g64[pname].to(torch.float32).numpy()
                torch_err["grad"] = max(torch_err["grad"], rel_err(g32[pname], g64[pname]))
            print(f"{name}: logits rms {l64.pow(2).mean().sqrt().item():.3f}")
            for kind, y in trace:
                if not torch.isfinite(y).all():
                    raise SystemExit(f"{name}: non-finite values after a {kind} layer")
            for i, (mean, top) in enumerate(lrn_term_fractions(net64, trace)):
                print(f"{name}: LRN {i + 1}: alpha*sum(a^2)/k mean {mean:.3f}, max {top:.3f}")
                if mean < 0.03:
                    raise SystemExit(f"{name}: LRN {i + 1} barely changes its input; raise the activations")

    for pname, p in net64.named_tensors().items():
        tensors[f"final.{pname}"] = p.detach().to(torch.float32).numpy()
        tensors[f"velocity.{pname}"] = vel64[pname].to(torch.float32).numpy()
        torch_err["final"] = max(torch_err["final"], rel_err(net32.named_tensors()[pname], p))
        torch_err["velocity"] = max(torch_err["velocity"], rel_err(vel32[pname], vel64[pname]))
    if not all(np.isfinite(losses)):
        raise SystemExit(f"{name}: the loss is not finite: {losses}")
    print(f"{name}: losses " + " ".join(f"{v:.4f}" for v in losses))
    print(f"{name}: float32 PyTorch vs float64, max rel err: " + json.dumps({k: float(f"{v:.2e}") for k, v in torch_err.items()}))

    tools = pathlib.Path(__file__).resolve().parent
    metadata = {
        "spec": text,
        "torch_version": torch.__version__,
        "script_sha256": file_sha256(pathlib.Path(__file__).resolve()),
        "torch_nets_sha256": file_sha256(tools / "torch_nets.py"),
        "reference_dtype": "float64",
        "torch_float32_max_rel_err": json.dumps({k: float(f"{v:.3e}") for k, v in torch_err.items()}),
        # The values as written in the description; read as f32 they are what the steps used.
        "lr": repr(spec["recipe"]["learning_rate"]),
        "momentum": repr(spec["recipe"]["momentum"]),
        "weight_decay": repr(spec["recipe"]["weight_decay"]),
        "steps": str(STEPS),
        "batch": str(BATCH),
        "seed": str(SEED),
    }
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"twin-{name}.safetensors"
    save_sorted(tensors, path, metadata)
    print(f"{name}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(tensors)} tensors)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="*", default=list(NETS), help=f"nets to write (default: all of {', '.join(NETS)})")
    parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "fixtures")
    args = parser.parse_args()
    # One thread and deterministic kernels make the written files the same on every run.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.nets:
        if name not in NETS:
            raise SystemExit(f"unknown net {name!r}; nets are {', '.join(NETS)}")
        make_fixture(name, args.out)


if __name__ == "__main__":
    main()
