"""Reference logits of the torchvision-layout fixture net on real photographs,
with our preprocessing: writes fixtures/torchvision-mini-photos.safetensors.

The photos (crates/alexnet-data/tests/photos, CC0 / public domain) are resized
and centre-cropped to 256x256 by our own code (the `photo_pixels` example, so
both sides start from identical u8 pixels); this script then applies
torchvision's convention independently — centre 224x224 crop, x/255, minus the
ImageNet mean, divided by the std — and runs the fixture net
(fixtures/torchvision-mini.pth, written by tools/torchvision_fixtures.py) in
float64. The CLI test imports the same .pth, runs `alexnet classify --json
--logits` on the photos, and compares.

    python3 tools/torchvision_photo_reference.py
"""

import numpy as np
import torch
from safetensors.numpy import save_file

from our_pixels import PHOTOS, PHOTOS_DIR, ROOT, our_pixels
from torchvision_fixtures import AlexNet

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def main() -> None:
    net = AlexNet().double().eval()
    state = torch.load(ROOT / "fixtures/torchvision-mini.pth", weights_only=True)
    net.load_state_dict({k: v.double() for k, v in state.items()})
    tensors = {}
    for name in PHOTOS:
        pixels = our_pixels(PHOTOS_DIR / name, 256)
        crop = pixels[:, 16:240, 16:240].astype(np.float64) / 255.0
        x = (crop - MEAN[:, None, None]) / STD[:, None, None]
        with torch.no_grad():
            logits = net(torch.from_numpy(x)[None])[0].numpy()
        tensors[name] = logits
        print(f"{name}: logits {np.array2string(logits, precision=3)}")
    save_file(tensors, str(ROOT / "fixtures/torchvision-mini-photos.safetensors"))


if __name__ == "__main__":
    main()
