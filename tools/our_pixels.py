"""What our code makes of a photo before any arithmetic: shorter side resized to
`size`, centre square kept, RGB u8 CHW — by running the `photo_pixels` example,
so that reference scripts start from exactly the pixels `classify` sees."""

import pathlib
import subprocess
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
PHOTOS_DIR = ROOT / "crates/alexnet-data/tests/photos"
PHOTOS = ["chelsea.png", "coffee.png", "coins.png", "rocket.jpg"]


def our_pixels(photo: pathlib.Path, size: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "pixels.bin"
        subprocess.run(
            ["cargo", "run", "--release", "-q", "-p", "alexnet-data", "--example", "photo_pixels",
             "--", str(photo), str(size), str(out)],
            check=True, cwd=ROOT,
        )
        return np.frombuffer(out.read_bytes(), dtype=np.uint8).reshape(3, size, size)
