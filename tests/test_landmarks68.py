"""The faceplugin 68-point landmark net (generator trainer's pose term): executor == onnxruntime, its points on a
real aligned face agree with YuNet's, it is differentiable, and the trainer's term reports and lowers the shift."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from faceanonymixer import align as A
from faceanonymixer.errors import MissingWeightsError
from faceanonymixer.images import read_image
from faceanonymixer.registry import data_dir


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


@pytest.mark.parametrize("term,stat", [("id_band_landmarks", "band_lm_shift"), ("id_band_framing", "band_framing")])
def test_trainer_landmark_terms_lower_what_they_measure(tmp_path, lm_net, term, stat):
    from test_training import _faces, _gcfg
    from faceanonymixer.train.gan import GeneratorTrainer
    torch.manual_seed(0)
    tr = GeneratorTrainer(_gcfg(tmp_path, id_band=0.1, id_band_layers=[1, 2, 3], **{term: 1.0},
                                id_band_psi=0.7, id_noise="const", id_diversity_every=2, id_diversity_images=8,
                                lr=0.005), images=_faces(8))
    first = tr._identity_step()
    assert stat in first and tr.lm_net is not None
    z = torch.randn(32, 32, generator=torch.Generator().manual_seed(7))
    measure = lm_net.shift if term == "id_band_landmarks" else lm_net.framing_shift

    @torch.no_grad()
    def shift() -> float:
        w = tr.G.mapping(z)
        ws = w.unsqueeze(1).repeat(1, tr.G.num_ws, 1)
        ws_b = ws.clone()
        ws_b[:, 1:4] = w.roll(1, dims=0).unsqueeze(1)
        x, x_b = (tr.G.synthesis(v, noise_mode="const") for v in (ws, ws_b))
        return float(measure(tr.lm_net(x), tr.lm_net(x_b)).mean())
    before = shift()
    for _ in range(30):
        tr._identity_step()
    after = shift()
    assert after < 0.8 * before, (before, after)


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


def test_geometry_terms_can_be_kept_to_the_coarse_synthesis_convs(tmp_path, lm_net):
    from test_training import _faces, _gcfg
    from faceanonymixer.train.gan import GeneratorTrainer

    def after_one_step(**kw) -> dict:
        torch.manual_seed(0)
        tr = GeneratorTrainer(_gcfg(tmp_path, id_band=0.1, id_band_layers=[1, 2, 3], id_band_psi=0.7,
                                    id_noise="const", id_diversity_every=2, id_diversity_images=8, **kw),
                              images=_faces(8))
        geo = {id(p) for p in tr._geometry_params()} if kw.get("id_band_geometry_res") else set()
        tr._identity_step()
        return {n: (id(p) in geo, p.detach().clone()) for n, p in tr.G.named_parameters()}
    base = after_one_step()
    kept = after_one_step(id_band_framing=10.0, id_band_geometry_res=8)
    coarse = [n for n, (g, _) in kept.items() if g]
    assert coarse and all(n.startswith(("input.", "conv1.", "convs.0.", "convs.1.")) for n in coarse), coarse
    for n, (g, p) in kept.items():
        if g:
            continue
        assert torch.equal(p, base[n][1]), f"{n} moved by the framing term"        # fine convs, toRGB, mapping
    assert any(not torch.equal(p, base[n][1]) for n, (g, p) in kept.items() if g)
