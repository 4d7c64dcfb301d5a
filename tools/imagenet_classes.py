"""Writes crates/alexnet-interop/assets/imagenet1k-classes.tsv: ImageNet-1k's 1000
WordNet ids in class-index order with their readable names, taken from the
`timm` wheel (Apache-2.0), which ships `imagenet_synsets.txt` (ids in index
order) and `imagenet_synset_to_lemma.txt` (id -> names).

    pip download timm==1.0.31 --no-deps -d /tmp/timm
    python3 tools/imagenet_classes.py /tmp/timm/timm-1.0.31-py3-none-any.whl
"""

import hashlib
import sys
import zipfile
from pathlib import Path

WHEEL_SHA256 = "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"
OUT = Path(__file__).resolve().parent.parent / "crates/alexnet-interop/assets/imagenet1k-classes.tsv"


def main(wheel: str) -> None:
    data = Path(wheel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256} (timm 1.0.31)")
    with zipfile.ZipFile(wheel) as z:
        ids = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = {}
        for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines():
            wnid, _, names = line.partition("\t")
            lemmas[wnid] = names.strip()
    if len(ids) != 1000 or len(set(ids)) != 1000:
        sys.exit(f"expected 1000 distinct synsets, found {len(ids)}")
    missing = [i for i in ids if i not in lemmas]
    if missing:
        sys.exit(f"no names for {missing[:5]}")
    lines = ["# ImageNet-1k classes in index order: WordNet id, names. From timm 1.0.31 (Apache-2.0)."]
    lines += [f"{wnid}\t{lemmas[wnid]}" for wnid in ids]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(ids)} classes)")


if __name__ == "__main__":
    main(sys.argv[1])
