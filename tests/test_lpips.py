"""LPIPS v0.1 (models/lpips.py) against the reference ``lpips`` package, on random backbone weights in
torchvision's file format and the shipped linear heads (tests/data/lpips/README.md); its file errors."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from faceanonymixer import registry
from faceanonymixer.errors import CheckpointFormatError, CorruptWeightsError, MissingWeightsError
from faceanonymixer.models.lpips import LPIPS, load_heads, load_lpips

DATA = Path(__file__).parent / "data" / "lpips"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.numerics]  # golden against the reference: .ci/run reruns it on other CPUs' kernels


def _maker():
    spec = importlib.util.spec_from_file_location("make_lpips_data", DATA / "make_lpips_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKER = _maker()
REF = torch.load(DATA / "reference.pt", weights_only=True)


def _torchvision_file(tmp_path: Path, net: str, name: str | None = None) -> Path:
    """The random backbone written as torchvision writes its ImageNet files: features.* plus classifier.*
    (small stand-ins here: the loader must ignore the classifier whatever it holds)."""
    sd = MAKER.backbone_state(net)
    assert MAKER.digest(sd.values()) == REF[net]["weights_sha256"], \
        "the seeded weights differ from the reference's: regenerate tests/data/lpips (README there)"
    sd["classifier.1.weight"] = torch.zeros(8, 4)
    sd["classifier.1.bias"] = torch.zeros(8)
    path = tmp_path / (name or f"{net}.pth")
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_reference_values_and_input_gradients(tmp_path, net):
    x0, x1 = MAKER.inputs()
    assert MAKER.digest([x0, x1]) == REF["x_sha256"]
    m = load_lpips(net, backbone=_torchvision_file(tmp_path, net))     # heads: the shipped registry file
    assert not any(p.requires_grad for p in m.parameters())
    a = x0.clone().requires_grad_(True)
    d = m(a, x1)
    d.sum().backward()
    ref = REF[net]
    assert d.shape == (3,)
    # rtol 1e-4: float32 convs reduce over K <= 4608 (VGG 512x3x3) through D <= 13 layers, so each feature carries
    # ~sqrt(K*D)*2^-24 ~ 1.5e-5 relative error from the summation order (other CPUs' kernels, torch 2.13 vs 2.14);
    # the distance averages squared feature differences, a few times that; passes on AVX-512, AVX2 and SSE4.1.
    torch.testing.assert_close(d.detach(), ref["d"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(a.grad, ref["grad_x0"], rtol=1e-3, atol=1e-4 * float(ref["grad_x0"].abs().max()))
    assert d[0] < d[1] < d[2]                 # a little noise < much noise < another image
    with torch.no_grad():
        assert torch.equal(m(x0, x0), torch.zeros(3))


def test_shipped_heads_are_the_packages_and_pinned():
    for net, channels in (("vgg", (64, 128, 256, 512, 512)), ("alex", (64, 192, 384, 256, 256))):
        path = registry.locate(f"lpips-{net}")                          # sha256-checked against the registry
        heads = load_heads(path, net)
        assert [h.shape[1] for h in heads] == list(channels)
        assert all((h >= 0).all() for h in heads)                       # the trained heads are non-negative
        meta = json.loads(path.with_suffix(".json").read_text())["meta"]
        assert "Redistribution and use" in meta["licence_text"] and "BSD-2-Clause" in meta["licence"]
    with pytest.raises(CheckpointFormatError, match="not the LPIPS v0.1 'alex' heads"):
        load_heads(registry.locate("lpips-vgg"), "alex")


def test_missing_backbone_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    if any(p.is_file() for p in registry.candidates("vgg16-imagenet")):
        pytest.skip("a vgg16-397923af.pth is installed on this machine")
    with pytest.raises(MissingWeightsError) as e:
        load_lpips("vgg")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and str(tmp_path) in msg and "download.pytorch.org/models/vgg16" in msg


def test_a_wrong_or_altered_backbone_is_refused(tmp_path, monkeypatch):
    alex = _torchvision_file(tmp_path, "alex")
    with pytest.raises(CheckpointFormatError, match=r"alex\.pth does not match.*wrong shapes"):
        load_lpips("vgg", backbone=alex)
    # under the registry's name, a file that is not torchvision's (here: random weights) fails its pinned sha256
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    _torchvision_file(tmp_path, "vgg", name="vgg16-397923af.pth")
    with pytest.raises(CorruptWeightsError, match="397923af8e79"):
        load_lpips("vgg")
    with pytest.raises(CheckpointFormatError, match="net must be one of"):
        load_lpips("squeeze")


@pytest.mark.parametrize("net,side", [("vgg", 16), ("alex", 31)])
def test_shape_checks_and_smallest_inputs(net, side):
    m = LPIPS(net)
    with pytest.raises(AssertionError):
        m(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))
    assert m(torch.zeros(2, 3, side, side), torch.ones(2, 3, side, side)).shape == (2,)   # smallest that reaches
    with pytest.raises(AssertionError, match=f"needs sides >= {side}"):                  # every tap
        m(torch.zeros(1, 3, side - 1, side - 1), torch.zeros(1, 3, side - 1, side - 1))
