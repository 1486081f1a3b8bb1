"""Face recognisers behind one API: ``get_recogniser(name, path=None, device='cpu')``.

| name | dim | differentiable | white_box | role |
|---|---|---|---|---|
| ``sface`` | 128 | yes | yes | default loss network (int8 ONNX dequantised to PyTorch) |
| ``dlib-resnet`` | 128 | no | no | independent evaluation |
| ``faceplugin-fr`` | 512 | yes | no | third, black-box evaluation net |
| ``arcface-ir-se50`` | 512 | yes | yes | the paper's loss net, only with a user-supplied ``model_ir_se50.pth`` |

All take ArcFace-aligned RGB [0,1] 112x112 crops (``embed``) or FFHQ-aligned [-1,1] images (``embed_ffhq``)
and return L2-normalised embeddings; scores are cosine similarities (``cosine``).
"""
from __future__ import annotations

import threading

import torch

from ..errors import FaceAnonyMixerError
from ..registry import locate
from .base import ARCFACE_TEMPLATE, Recogniser, cosine, ffhq_to_arcface_matrix

NAMES = ("sface", "dlib-resnet", "faceplugin-fr", "arcface-ir-se50")
# embedding sizes and differentiability, readable without importing a recogniser (dlib is heavy); each class's
# ``dim`` / ``differentiable`` is the source, and tests/test_fr.py keeps these tables equal to it
DIMS = {"sface": 128, "dlib-resnet": 128, "faceplugin-fr": 512, "arcface-ir-se50": 512}
DIFFERENTIABLE = ("sface", "faceplugin-fr", "arcface-ir-se50")   # torch graphs (dlib is native)
DEFAULT = "sface"

_CACHE: dict[tuple[str, str, str], Recogniser] = {}
_LOCK = threading.Lock()


def _build(name: str, path) -> Recogniser:
    if name == "sface":
        from .sface import SFace  # recognisers load on demand: dlib is a heavy native extension
        return SFace(path)
    if name == "dlib-resnet":
        from .dlib_resnet import DlibResNet
        return DlibResNet(path)
    if name == "faceplugin-fr":
        from .faceplugin import FacePluginFR
        return FacePluginFR(path)
    if name == "arcface-ir-se50":
        from .arcface import ArcFaceIRSE50
        return ArcFaceIRSE50(path)
    raise FaceAnonyMixerError(f"unknown face recogniser '{name}'; choose one of: {', '.join(NAMES)}")


def get_recogniser(name: str = DEFAULT, path=None, device="cpu") -> Recogniser:
    """Load (once per process, per name/file/device) a frozen, eval-mode recogniser.

    path: explicit model file (else the registry lookup); device: torch device for the differentiable nets
    (dlib always runs on the CPU and returns embeddings on the input's device). Raises MissingWeightsError
    naming the expected file when it cannot be found."""
    if name not in NAMES:
        raise FaceAnonyMixerError(f"unknown face recogniser '{name}'; choose one of: {', '.join(NAMES)}")
    resolved = str(locate(name, explicit=path))  # raises MissingWeightsError / CorruptWeightsError early
    dev = torch.device(device)
    key = (name, resolved, str(dev))
    with _LOCK:
        if key not in _CACHE:
            rec = _build(name, path)
            if name != "dlib-resnet":
                rec = rec.to(dev)
            rec.eval()
            _CACHE[key] = rec
        return _CACHE[key]


def available() -> list[str]:
    """Names (of ``NAMES``) whose model file is present and whose runtime imports."""
    out = []
    for name in NAMES:
        try:
            locate(name, verify=False)
        except FaceAnonyMixerError:
            continue
        if name == "dlib-resnet":
            try:
                import dlib  # noqa: F401
                locate("dlib-sp5", verify=False)
            except (ImportError, FaceAnonyMixerError):
                continue
        out.append(name)
    return out


def clear_cache() -> None:
    """Forget loaded recognisers (tests, or to free memory)."""
    with _LOCK:
        _CACHE.clear()


__all__ = ["NAMES", "DIMS", "DIFFERENTIABLE", "DEFAULT", "Recogniser", "get_recogniser", "available", "clear_cache",
           "cosine", "ffhq_to_arcface_matrix", "ARCFACE_TEMPLATE"]
