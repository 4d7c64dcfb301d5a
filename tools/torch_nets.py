"""PyTorch networks built from our network descriptions (the TOML files of
crates/alexnet/presets), layer for layer as the Rust engine plans them
(crates/alexnet/src/plan.rs), so that the engine can be checked against PyTorch
and timed against it on equal terms.

Parameters carry our names (`conv1.weight`, `fc6.bias`, ...) and PyTorch's
shapes, which are also ours, so tensors move between the two without reshaping.
"""

from __future__ import annotations

import pathlib
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "crates" / "alexnet" / "presets"

# Field defaults of crates/alexnet/src/spec.rs; a description may leave these out.
CONV_DEFAULTS = {"stride": 1, "pad": 0, "groups": 1, "init_std": 0.01, "bias_init": 0.0}
LINEAR_DEFAULTS = {"out": None, "init_std": 0.01, "bias_init": 0.0}
LRN_DEFAULTS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "groups": 1}


def load_spec(arch: str) -> dict:
    """A preset by name (`alexnet`, `alexnet-owt`, `cifar`) or a TOML file by path."""
    preset = PRESET_DIR / f"{arch}.toml"
    path = preset if preset.is_file() else pathlib.Path(arch)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
        raise FileNotFoundError(f"{arch!r} is neither a preset ({names}) nor a TOML file")
    with open(path, "rb") as f:
        return tomllib.load(f)


def as_f32(value: float) -> float:
    """The value the engine works with: it reads every real-valued field as f32.

    Rounding here keeps a float64 twin from differing from the engine by the
    representation error of constants such as alpha = 1e-4, which is not an f32.
    """
    return float(np.float32(value))


def _conv_output_side(side: int, kernel: int, stride: int, pad: int) -> int:
    padded = side + 2 * pad
    if padded < kernel:
        raise ValueError(f"a {kernel}x{kernel} kernel does not fit a side of {side} padded by {pad}")
    return (padded - kernel) // stride + 1


def _pool_output_side(side: int, size: int, stride: int) -> int:
    if side < size:
        raise ValueError(f"a {size}x{size} pooling window does not fit a side of {side}")
    return (side - size) // stride + 1


class Net(nn.Module):
    """The network a description specifies, with the engine's layer semantics.

    `layers` lists `(kind, settings)` in order; convolutions and linear layers
    also live in `learned` (keyed by their names) so that PyTorch tracks them.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self.classes = int(spec["classes"])
        inp = spec["input"]
        shape = (int(inp["channels"]), int(inp["height"]), int(inp["width"]))
        self.input_shape = shape
        self.learned = nn.ModuleDict()
        self.layers: list[tuple[str, dict]] = []
        # Values per image entering each dropout layer, in order: the length of a mask row.
        self.dropout_lens: list[int] = []
        self.init: dict[str, tuple[float, float]] = {}
        for index, layer in enumerate(spec["layers"]):
            kind = layer["type"]
            if kind == "conv":
                c = {**CONV_DEFAULTS, **layer}
                channels, height, width = shape
                conv = nn.Conv2d(
                    channels,
                    c["out"],
                    c["kernel"],
                    stride=c["stride"],
                    padding=c["pad"],
                    groups=c["groups"],
                )
                self.learned[c["name"]] = conv
                self.init[c["name"]] = (float(c["init_std"]), float(c["bias_init"]))
                shape = (
                    c["out"],
                    _conv_output_side(height, c["kernel"], c["stride"], c["pad"]),
                    _conv_output_side(width, c["kernel"], c["stride"], c["pad"]),
                )
                self.layers.append(("conv", {"name": c["name"]}))
            elif kind == "linear":
                c = {**LINEAR_DEFAULTS, **layer}
                # The linear layer without `out` is the classifier: one output per class.
                outputs = self.classes if c["out"] is None else int(c["out"])
                linear = nn.Linear(shape[0] * shape[1] * shape[2], outputs)
                self.learned[c["name"]] = linear
                self.init[c["name"]] = (float(c["init_std"]), float(c["bias_init"]))
                shape = (outputs, 1, 1)
                self.layers.append(("linear", {"name": c["name"]}))
            elif kind in ("relu", "tanh"):
                self.layers.append((kind, {}))
            elif kind == "lrn":
                c = {**LRN_DEFAULTS, **layer}
                if shape[0] % c["groups"] != 0:
                    raise ValueError(f"layer {index + 1} (lrn): {shape[0]} channels in {c['groups']} groups")
                settings = {
                    "size": int(c["size"]),
                    "alpha": as_f32(c["alpha"]),
                    "beta": as_f32(c["beta"]),
                    "k": as_f32(c["k"]),
                    "groups": int(c["groups"]),
                }
                self.layers.append(("lrn", settings))
            elif kind in ("max-pool", "avg-pool"):
                size, stride = int(layer["size"]), int(layer["stride"])
                shape = (
                    shape[0],
                    _pool_output_side(shape[1], size, stride),
                    _pool_output_side(shape[2], size, stride),
                )
                self.layers.append((kind, {"size": size, "stride": stride}))
            elif kind == "dropout":
                p = as_f32(layer["p"])
                self.dropout_lens.append(shape[0] * shape[1] * shape[2])
                self.layers.append(("dropout", {"p": p}))
            else:
                raise ValueError(f"layer {index + 1}: unknown type {kind!r}")
        if shape != (self.classes, 1, 1):
            raise ValueError(f"the net ends in {shape} values, not {self.classes} class scores")

    def forward(self, x: torch.Tensor, masks=None, trace: list | None = None) -> torch.Tensor:
        """Class scores of the batch `x` (NCHW).

        `masks`, when given in training mode, replaces drawing: one tensor per
        dropout layer in order, `[N, values per image]`, holding 0 or 1/(1-p).
        `trace`, when given, receives `(kind, output)` after every layer.
        """
        given = iter(masks) if masks is not None else None
        for kind, s in self.layers:
            if kind == "conv":
                x = self.learned[s["name"]](x)
            elif kind == "linear":
                x = self.learned[s["name"]](x.flatten(1))
            elif kind == "relu":
                x = torch.relu(x)
            elif kind == "tanh":
                x = torch.tanh(x)
            elif kind == "lrn":
                x = self._lrn(x, s)
            elif kind == "max-pool":
                x = F.max_pool2d(x, s["size"], s["stride"])
            elif kind == "avg-pool":
                x = F.avg_pool2d(x, s["size"], s["stride"])
            elif kind == "dropout":
                x = self._dropout(x, s["p"], given)
            if trace is not None:
                trace.append((kind, x))
        return x.flatten(1)

    @staticmethod
    def _lrn(x: torch.Tensor, s: dict) -> torch.Tensor:
        # The paper's b = a / (k + alpha * sum a^2)^beta within each channel group.
        # PyTorch divides alpha by the window size (it averages the squares), so
        # it is given alpha * size to compute the paper's sum. Its zero padding at
        # the ends of the channel axis equals our clipping of the window, so
        # running it on each group separately gives the per-tower normalisation.
        blocks = x.chunk(s["groups"], dim=1)
        normalised = [
            F.local_response_norm(b, s["size"], alpha=s["alpha"] * s["size"], beta=s["beta"], k=s["k"])
            for b in blocks
        ]
        return torch.cat(normalised, dim=1)

    def _dropout(self, x: torch.Tensor, p: float, given) -> torch.Tensor:
        # Inverted dropout, as the engine does it: survivors are scaled by 1/(1-p)
        # in training, and the layer is the identity at test time.
        if not self.training:
            return x
        if given is not None:
            mask = next(given)
            mask = torch.as_tensor(mask).to(dtype=x.dtype, device=x.device).reshape(x.shape)
        else:
            keep = torch.full_like(x, 1.0 - p)
            mask = torch.bernoulli(keep) / (1.0 - p)
        return x * mask

    def named_tensors(self) -> dict[str, nn.Parameter]:
        """Every parameter under the engine's name, in the engine's order."""
        out = {}
        for kind, s in self.layers:
            if kind in ("conv", "linear"):
                module = self.learned[s["name"]]
                out[f"{s['name']}.weight"] = module.weight
                out[f"{s['name']}.bias"] = module.bias
        return out

    @torch.no_grad()
    def init_paper(self, generator: torch.Generator | None = None) -> None:
        """The paper's initialisation: weights N(0, init_std^2), biases bias_init.

        Values are drawn where `generator` lives and then copied, so a CPU generator
        gives the same weights to a net on any device.
        """
        for name, (std, bias) in self.init.items():
            module = self.learned[name]
            w = module.weight
            device = generator.device if generator is not None else w.device
            drawn = torch.empty(w.shape, dtype=w.dtype, device=device).normal_(0.0, std, generator=generator)
            w.copy_(drawn)
            module.bias.fill_(bias)


@torch.no_grad()
def paper_sgd_step(net: Net, lr: float, momentum: float, weight_decay: float, velocities: dict) -> None:
    """One step of the paper's SGD (Section 5) from the gradients in `.grad`:

        v <- momentum * v - weight_decay * lr * w - lr * dL/dw,   w <- w + v

    with decay on weights only. Written out rather than torch.optim.SGD, which
    keeps its velocity without the learning rate and so differs from the paper
    once the rate changes. `velocities` maps our names to tensors and is filled
    with zeros on first use.
    """
    for name, w in net.named_tensors().items():
        v = velocities.get(name)
        if v is None:
            v = velocities[name] = torch.zeros_like(w)
        decay = weight_decay if name.endswith(".weight") else 0.0
        v.copy_(momentum * v - decay * lr * w - lr * w.grad)
        w.add_(v)
