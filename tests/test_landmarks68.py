"""The faceplugin 68-point landmark net (the band probes' landmark measurement, lab/probes/band_probe.py): executor ==
onnxruntime, its points on a real aligned face agree with YuNet's, it is differentiable, and its framing shift counts
whole-face motion only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from faceanonymixer import align as A
from faceanonymixer.errors import MissingWeightsError
from faceanonymixer.images import read_image
from faceanonymixer.registry import data_dir

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels


@pytest.fixture(scope="module")
def lm_net():
    from faceanonymixer.models.landmarks68 import Landmarks68
    try:
        return Landmarks68()
    except MissingWeightsError as e:
        pytest.skip(f"fr_landmark.onnx not installed (make install fetches it with npm): {e}")


def test_executor_matches_onnxruntime(lm_net):
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    ref = ort.InferenceSession(str(lm_net.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = lm_net.net(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (1, 136)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_points_on_an_aligned_photo_agree_with_yunet_and_are_differentiable(lm_net):
    from faceanonymixer.models.landmarks68 import LEFT_EYE, RIGHT_EYE
    path = data_dir() / "samples" / "obama.jpg"
    if not path.is_file():
        pytest.skip(f"sample photo {path} not found (installed by `make install`)")
    img = read_image(path)
    aligned = A.align_ffhq(img, A.largest_face(img, source=path).landmarks5, 256)        # [256,256,3] uint8
    ref = A.largest_face(aligned).landmarks5                                             # YuNet, [5,2] px
    x = torch.from_numpy(aligned).permute(2, 0, 1)[None].float() / 127.5 - 1
    x64 = torch.nn.functional.interpolate(x, size=64, mode="area").requires_grad_(True)   # generator resolution
    lm = lm_net(x64)                                                                     # [1,68,2] in 64-px frame
    assert lm.shape == (1, 68, 2)
    p = lm[0].detach().numpy()
    ours = np.stack([p[LEFT_EYE].mean(0), p[RIGHT_EYE].mean(0), p[30], (p[48] + p[60]) / 2, (p[54] + p[64]) / 2])
    ref64 = (ref + 0.5) * 64 / 256 - 0.5
    iod = np.linalg.norm(ref64[1] - ref64[0])
    err = np.linalg.norm(ours - ref64, axis=1) / iod
    assert err.mean() < 0.15, err                  # the two nets define the points differently
    g, = torch.autograd.grad(lm[:, :, 0].sum(), x64, retain_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    moved = torch.roll(x64.detach(), shifts=2, dims=3)                                  # face 2 px to the right
    d = (lm_net(moved) - lm.detach())[0, :, 0].mean().item()
    assert 1.0 < d < 3.0, d


def test_framing_shift_counts_whole_face_motion_not_shape():
    import math
    from faceanonymixer.models.landmarks68 import Landmarks68 as L
    a = torch.rand(4, 68, 2, generator=torch.Generator().manual_seed(0)) * 30 + 17        # [4,68,2] px
    five = L.five(a)
    assert five.shape == (4, 5, 2)
    assert torch.allclose(L.framing_shift(a, a), torch.zeros(4), atol=1e-5)
    c = five.mean(1, keepdim=True)
    th = math.radians(4)
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    moved = ((a - c) @ rot.T) * 1.05 + c + torch.tensor([1.5, -0.5])                     # roll + scale + shift
    whole = (L.five(moved) - five).norm(dim=-1).mean(1) / L.inter_ocular(a)               # all of it is framing
    assert torch.allclose(L.framing_shift(a, moved), whole, atol=1e-4)
    # a pure shape change: a random move of the 5 points with the 4 similarity directions (x/y shift, scale,
    # roll about the centroid) projected out leaves the framing at 0
    from faceanonymixer.models.landmarks68 import LEFT_EYE, RIGHT_EYE
    q = five - c                                                                          # [4,5,2]
    basis = torch.stack([torch.tensor([1.0, 0.0]).expand(4, 5, 2), torch.tensor([0.0, 1.0]).expand(4, 5, 2),
                         q, torch.stack([-q[..., 1], q[..., 0]], -1)], 1).reshape(4, 4, 10)
    qb, _ = torch.linalg.qr(basis.transpose(1, 2))                                        # [4,10,4] orthonormal
    d = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    d = (d - (qb @ (qb.transpose(1, 2) @ d[..., None]))[..., 0]).reshape(4, 5, 2) * 1.5   # [4,5,2] px
    b = a.clone()
    for k, idx in enumerate([LEFT_EYE, RIGHT_EYE, [30], [48], [54]]):
        b[:, idx] += d[:, k:k + 1]
    total = (L.five(b) - five).norm(dim=-1).mean(1) / L.inter_ocular(a)
    assert (total > 0.02).all(), total
    assert torch.allclose(L.framing_shift(a, b), torch.zeros(4), atol=1e-4)
