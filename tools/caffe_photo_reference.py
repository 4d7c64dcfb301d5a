"""Reference logits of the Caffe fixture nets on real photographs, with our
preprocessing: writes fixtures/caffe-mini-photos.safetensors.

The photos (crates/alexnet-data/tests/photos) are resized and centre-cropped to
the mean image's 112x112 by our own code (tools/our_pixels.py); this script then
follows Caffe's convention independently — channels to BGR, minus the BGR mean
image (fixtures/caffe-mini-mean.binaryproto, as stored in the reference file),
the centre 99x99 crop — and runs the nets of tools/caffe_fixtures.py (same
seeded weights) in float64 with Caffe's LRN and round-up pooling. The CLI test
imports the caffemodels with the mean file, runs `alexnet classify --json
--logits`, and compares.

    python3 tools/caffe_photo_reference.py
"""

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from caffe_fixtures import CONVS, FIXTURES, OFFSET, SIZE, STORED, caffe_forward, make_weights, pool5_side
from our_pixels import PHOTOS, PHOTOS_DIR, our_pixels

# The two nets exactly as caffe_fixtures.main() builds them.
NETS = {
    "alexnet": dict(order="norm-pool", lrn=dict(size=5, alpha=1e-4, beta=0.75), seed=1),
    "caffenet": dict(order="pool-norm", lrn=dict(size=5, alpha=5e-4, beta=0.75, k=2.0), seed=2),
}


def main() -> None:
    mean = load_file(str(FIXTURES / "caffe-mini-reference.safetensors"))["mean"].astype(np.float64)
    fc6_inputs = CONVS[-1]["out"] * pool5_side(SIZE) ** 2
    tensors = {}
    for photo in PHOTOS:
        rgb = our_pixels(PHOTOS_DIR / photo, STORED).astype(np.float64)
        bgr = rgb[::-1] - mean
        x = torch.from_numpy(np.ascontiguousarray(bgr[None, :, OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]))
        for name, net in NETS.items():
            weights = make_weights(net["seed"], fc6_inputs)
            logits = caffe_forward(x, net["order"], net["lrn"], weights)[0].numpy()
            tensors[f"{name}/{photo}"] = logits
            print(f"{name} {photo}: {np.array2string(logits, precision=3)}")
    save_file(tensors, str(FIXTURES / "caffe-mini-photos.safetensors"))


if __name__ == "__main__":
    main()
