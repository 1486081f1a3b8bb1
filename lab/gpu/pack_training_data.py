"""Pack / unpack the aligned training-image cache for a GPU run.

The device machine gets the repository (64 MiB in all) but not ../shared/data, and the raw cache
(runs/data/images_train_64.npz, 6,507 x 64x64x3 uint8) is 80 MB. Packed as JPEG quality 95 without chroma
subsampling it is 24 MB (41.7 dB PSNR against the raw cache, measured on every 20th image), small enough to travel.

    python lab/gpu/pack_training_data.py pack runs/data/images_train_64.npz .gpu/data/images_train_64.jpgpack.npz
    python lab/gpu/pack_training_data.py unpack .gpu/data/images_train_64.jpgpack.npz runs/data/images_train_64.npz
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def pack(src: Path, dst: Path, quality: int = 95) -> None:
    z = np.load(src)
    imgs = z["images"]                                    # uint8 [N,R,R,3]
    blobs = []
    for im in imgs:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "JPEG", quality=quality, subsampling=0)
        blobs.append(np.frombuffer(b.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, data=np.concatenate(blobs), offsets=offsets, person=z["person"], files=z["files"],
             shape=np.array(imgs.shape[1:]))
    print(f"packed {len(imgs)} images: {dst.stat().st_size / 1e6:.1f} MB -> {dst}")


def unpack(src: Path, dst: Path) -> None:
    z = np.load(src)
    data, off = z["data"], z["offsets"]
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(data[off[i]:off[i + 1]].tobytes())).convert("RGB"))
                     for i in range(len(off) - 1)])
    assert imgs.shape[1:] == tuple(z["shape"]), (imgs.shape, z["shape"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.npz")
    np.savez(tmp, images=imgs, person=z["person"], files=z["files"])
    tmp.replace(dst)
    print(f"unpacked {len(imgs)} images -> {dst}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    (pack if a.op == "pack" else unpack)(a.src, a.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
