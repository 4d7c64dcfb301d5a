"""Writes crates/alexnet-data/tests/photos/chelsea-cmyk.jpg: the CC0 chelsea.png
photograph, halved, converted to CMYK and saved as an Adobe CMYK JPEG (the kind
print workflows produce, and a few ImageNet files are). The `image` crate cannot
write one, so the test's file is made here with Pillow (pip install pillow).

    python3 tools/make_cmyk_jpeg.py
"""

from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).resolve().parent.parent / "crates/alexnet-data/tests/photos"

source = Image.open(PHOTOS / "chelsea.png").convert("RGB")
small = source.resize((source.width // 2, source.height // 2), Image.LANCZOS)
small.convert("CMYK").save(PHOTOS / "chelsea-cmyk.jpg", "JPEG", quality=92)
small.save(PHOTOS / "chelsea-small.png")
print("wrote chelsea-cmyk.jpg and chelsea-small.png (its RGB source)")
