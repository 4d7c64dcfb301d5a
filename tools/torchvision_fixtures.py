"""Writes the fixtures of the torchvision importer (crates/alexnet-interop/tests/torchvision.rs).

- fixtures/torchvision-mini.pth and torchvision-mini-legacy.pth: the state_dict of a
  narrow net with torchvision's AlexNet layout (same module indices as
  torchvision.models.alexnet, which is not installed here, so the module is
  defined below), seeded random weights, saved by torch.save in the zip and the
  legacy (`_use_new_zipfile_serialization=False`) layouts.
- fixtures/torchvision-mini-reference.safetensors: a few seeded random 3x224x224
  inputs and PyTorch's logits for them (eval mode), computed in float64 from the
  same float32 weights, so the test measures the Rust engine's own float32 error.
  The inputs are stored as uint8 `images`; the net's input is (images - 128) / 64,
  exact in float32, which keeps the file small.
- fixtures/torchvision-dtypes.pth and torchvision-dtypes-legacy.pth: a training
  checkpoint ({'epoch', 'optimizer', 'state_dict'}) whose state_dict (keys with
  DataParallel's `module.` prefix) holds float32/float16/bfloat16/float64/int64
  tensors, a transposed view, a slice sharing its base's storage and an
  nn.Parameter, all with values the test computes itself.
- fixtures/pickle-corpus/: hostile and broken files, each of which the reader must
  refuse with a message naming the problem (they also seed the fuzz test).

Usage: python3 tools/torchvision_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import io
import pathlib
import struct
import tarfile
import zipfile

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 2012
WIDTHS = (8, 16, 24, 16, 16)
FC = (32, 32)
CLASSES = 10
IMAGES = 3


class AlexNet(nn.Module):
    """torchvision.models.AlexNet's layout with chosen widths."""

    def __init__(self, widths=WIDTHS, fc=FC, classes=CLASSES):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(c5 * 6 * 6, fc[0]),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(fc[0], fc[1]),
            nn.ReLU(inplace=True),
            nn.Linear(fc[1], classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def seeded_net() -> AlexNet:
    """He-normal weights and small uniform biases, so activations stay lively
    through the narrow layers (torch's default init shrinks them)."""
    torch.manual_seed(SEED)
    net = AlexNet()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                )
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.2 - 0.1)
    return net.eval()


def reference(net: AlexNet) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(IMAGES, 3, 224, 224), dtype=np.uint8)
    x = (torch.from_numpy(images).double() - 128.0) / 64.0
    double = AlexNet().double().eval()
    double.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    with torch.no_grad():
        logits = double(x)
        logits32 = net(x.float()).double()
    err = ((logits32 - logits).abs().max() / logits.abs().max()).item()
    print(f"float32 PyTorch vs float64: max-norm relative error {err:.2e}")
    return {"images": images, "logits": logits.numpy()}


def dtype_checkpoint() -> dict:
    """Tensors whose values the Rust test recomputes: base = arange(12)/4 - 1 as 3x4."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4 - 1
    state = collections.OrderedDict()
    state["module.f32"] = base.clone()
    state["module.f16"] = base.half()
    state["module.bf16"] = base.bfloat16()
    state["module.f64"] = base.double()
    state["module.i64"] = torch.arange(12).reshape(3, 4) - 5
    state["module.transposed"] = base.t()
    shared = base.clone()
    state["module.shared"] = shared
    state["module.slice"] = shared.view(-1)[3:7]
    state["module.param"] = nn.Parameter(base.clone())
    state["module.scalar"] = torch.tensor(2.5)
    return {
        "epoch": 3,
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(5)}}, "lr": 0.1},
        "state_dict": state,
    }


def pickle_bytes(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def zip_with(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def save_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def hostile(mini_zip: bytes, mini_legacy: bytes, net: AlexNet) -> dict[str, bytes]:
    """Each file and the problem the reader must name (see the test's table)."""
    files = {}
    system = pickle_bytes(b"cos\nsystem\n", b"X\x0a\x00\x00\x00echo pwned", b"\x85R")
    files["os-system.pkl"] = system
    files["os-system.pth"] = zip_with({"archive/data.pkl": system, "archive/version": b"3\n"})
    files["builtins-eval.pkl"] = (
        b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x04 1+1\x85R."
    )
    files["whole-model.pth"] = save_bytes(net)
    files["deep-marks.pkl"] = pickle_bytes(b"(" * 100_000)
    files["deep-tuples.pkl"] = pickle_bytes(b")" + b"\x85" * 100_000)
    # (x, x) of (x, x) of ... through the memo: 2^60 leaves from 300 bytes.
    files["memo-bomb.pkl"] = pickle_bytes(b")" + b"q\x00h\x00\x86" * 60)
    files["huge-length.pkl"] = pickle_bytes(b"X" + struct.pack("<I", 0xFFFF_FFF0) + b"abc")
    files["huge-length-unicode8.pkl"] = (
        b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62) + b"abc."
    )
    files["truncated.pth"] = mini_zip[: len(mini_zip) // 2]
    files["truncated-legacy.pth"] = mini_legacy[: len(mini_legacy) - 1000]
    files["entry-sizes.pth"] = oversize_entry(mini_zip)
    files["deflated.pth"] = zip_with(zip_entries(mini_zip), zipfile.ZIP_DEFLATED)
    files["extent-past-storage.pth"] = extent_past_storage()
    files["old-tar-format.pth"] = old_tar()
    return files


def oversize_entry(data: bytes) -> bytes:
    """The central directory entry of a storage claims 2 GB stored and unstored."""
    data = bytearray(data)
    name = b"torchvision-mini/data/0"
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == name:
            struct.pack_into("<II", data, at + 20, 0x7FFF_FFF0, 0x7FFF_FFF0)
            return bytes(data)
        at = data.find(b"PK\x01\x02", at + 4)
    raise SystemExit(f"no central directory entry {name!r}")


def extent_past_storage() -> bytes:
    """A tensor of 1000 elements over a storage of 4 (its size patched in the pickle)."""
    entries = zip_entries(save_bytes({"w": torch.zeros(4)}))
    pickle_name = next(n for n in entries if n.endswith("/data.pkl"))
    size_tuple = b"K\x04\x85"
    assert entries[pickle_name].count(size_tuple) == 1
    entries[pickle_name] = entries[pickle_name].replace(size_tuple, b"M\xe8\x03\x85")
    return zip_with(entries)


def old_tar() -> bytes:
    """What PyTorch before 0.4 wrote: a tar of sys_info, pickle, storages, tensors."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["sys_info", "pickle", "storages", "tensors"]:
            data = pickle_bytes(b"N")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} ({len(data)} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "fixtures")
    out = parser.parse_args().out

    net = seeded_net()
    # torch names the zip's top directory after the file; write through a path
    # so the archive looks like a real download's.
    mini_zip_path = out / "torchvision-mini.pth"
    mini_zip_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), mini_zip_path)
    mini_zip = mini_zip_path.read_bytes()
    print(f"wrote {mini_zip_path} ({len(mini_zip)} bytes)")
    mini_legacy = save_bytes(net.state_dict(), _use_new_zipfile_serialization=False)
    write(out / "torchvision-mini-legacy.pth", mini_legacy)

    ref = reference(net)
    ref_path = out / "torchvision-mini-reference.safetensors"
    save_file(
        ref,
        str(ref_path),
        metadata={
            "input": "(images - 128) / 64",
            "logits": "float64 PyTorch, eval mode, from the float32 weights of torchvision-mini.pth",
            "written_by": "tools/torchvision_fixtures.py",
        },
    )
    print(f"wrote {ref_path} ({ref_path.stat().st_size} bytes)")

    dtypes_path = out / "torchvision-dtypes.pth"
    torch.save(dtype_checkpoint(), dtypes_path)
    print(f"wrote {dtypes_path} ({dtypes_path.stat().st_size} bytes)")
    write(
        out / "torchvision-dtypes-legacy.pth",
        save_bytes(dtype_checkpoint(), _use_new_zipfile_serialization=False),
    )

    # Protocol 5 (frames, MEMOIZE, STACK_GLOBAL) instead of torch's default 2.
    dtypes_p5_path = out / "torchvision-dtypes-p5.pth"
    torch.save(dtype_checkpoint(), dtypes_p5_path, pickle_protocol=5)
    print(f"wrote {dtypes_p5_path} ({dtypes_p5_path.stat().st_size} bytes)")
    write(
        out / "torchvision-dtypes-p5-legacy.pth",
        save_bytes(dtype_checkpoint(), _use_new_zipfile_serialization=False, pickle_protocol=5),
    )

    for name, data in hostile(mini_zip, mini_legacy, net).items():
        write(out / "pickle-corpus" / name, data)


if __name__ == "__main__":
    main()
