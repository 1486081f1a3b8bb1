"""CLIP ViT image tower (models/clip_vit.py) against openai/CLIP's own model, the ViT-B/16 layout, the FaRL loader
and the 'farl-vit-b16' attribute encoder (fixtures README section 13)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from _numerics import assert_close32
from conftest import load_fixture
from faceanonymixer.errors import CheckpointFormatError, FaceAnonyMixerError, MissingWeightsError
from faceanonymixer.losses import FaRLTokens, attribute_loss, get_attribute_encoder
from faceanonymixer.models.clip_vit import VisionTransformer, infer_config, load_clip_visual, visual_state_dict
from faceanonymixer.registry import candidates, get_spec

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

# Golden tolerance (tests/_numerics.py): the small fixture ViT (width 64, 3 blocks): widest reduction the 16x16 patch
# conv (K = 3*16*16); per block q/k/v, scores, attention x values, out, MLP in and out: D = 1 + 3 * 6 + 1 (proj).
SMALL = dict(k=3 * 16 * 16, depth=20)

FARL_FILE = get_spec("farl-vit-b16").filename


@pytest.fixture(scope="module")
def small(fixtures_dir):
    return load_fixture("clip_vit_small.pt")


def _small_net(small) -> VisionTransformer:
    c = small["constructor"]
    net = VisionTransformer(input_resolution=c["image_resolution"], patch_size=c["vision_patch_size"],
                            width=c["vision_width"], layers=c["vision_layers"], output_dim=c["embed_dim"])
    net.load_state_dict(visual_state_dict(small["state_dict"], "fixture", "test"), strict=True)
    return net.eval().requires_grad_(False)


def _farl_style(small, **extra) -> dict:
    """What a FaRL .pth holds: {'state_dict': CLIP keys (text tower beside), ...} plus its MIM branch."""
    sd = dict(small["state_dict"])
    w = sd["visual.class_embedding"].shape[0]
    sd["visual.mask_token"] = torch.zeros(1, 1, w)
    sd["visual.lm_head.weight"] = torch.zeros(8, w)
    sd["visual.ln_lm.weight"] = torch.ones(w)
    sd.update(extra)
    return {"state_dict": sd, "epoch": 64}


def test_golden_tokens_and_embedding(small, one_thread):
    net = _small_net(small)
    with torch.no_grad():
        tokens = net.tokens(small["x"])
        emb = net.encode_image(small["x"])
    assert tokens.shape == small["tokens"].shape == (2, 17, 64)
    assert_close32(tokens, small["tokens"], **SMALL)
    assert_close32(emb, small["image_embedding"], **SMALL)
    assert_close32(net(small["x"]), small["image_embedding"], **SMALL)
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-2)   # inputs differ: the test can tell


def test_vit_b16_layout(fixtures_dir):
    spec = json.loads((fixtures_dir / "clip_vit_b16_layout.json").read_text())["clip_vit_b16"]
    args = dict(re.findall(r"(\w+)=(\d+)", spec["constructor"]))
    assert (args["image_resolution"], args["vision_patch_size"], args["vision_width"], args["vision_layers"],
            args["embed_dim"]) == ("224", "16", "768", "12", "512")
    want = {k: (tuple(shape), dtype) for k, shape, dtype in spec["keys"] if k.startswith("visual.")}
    assert len(want) == 152 and len(spec["keys"]) == 302
    with torch.device("meta"):
        net = VisionTransformer(input_resolution=224, patch_size=16, width=768, layers=12, output_dim=512)
    got = {"visual." + k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in net.state_dict().items()}
    assert got == want
    assert net.heads == 12
    # the loader reads the same architecture back from the shapes of a full CLIP / FaRL state dict
    sd = {k: torch.empty(shape, device="meta") for k, shape, _ in spec["keys"]}
    sd["visual.mask_token"] = torch.empty(1, 1, 768, device="meta")
    vis = visual_state_dict({"state_dict": sd}, "layout", "test")
    assert set(vis) == {k[len("visual."):] for k in want}
    assert infer_config(vis, "layout", "test") == dict(input_resolution=224, patch_size=16, width=768, layers=12,
                                                       heads=12, output_dim=512)


def test_farl_file_loads_through_the_registry(small, tmp_path, monkeypatch, one_thread):
    torch.save(_farl_style(small), tmp_path / FARL_FILE)
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    enc = get_attribute_encoder("farl-vit-b16")
    assert isinstance(enc, FaRLTokens) and enc.name == "farl-vit-b16"
    net = enc.net
    assert (net.input_resolution, net.patch_size, net.width, net.layers, net.heads, net.output_dim) == \
        (64, 16, 64, 2, 1, 32)
    assert not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        (tokens,) = enc.features(small["x"] * 2 - 1)   # [-1,1] in; the encoder maps back to [0,1]
    assert_close32(tokens, small["tokens"], **SMALL)
    # a plain CLIP state dict (no 'state_dict' wrapper) loads too
    torch.save(small["state_dict"], tmp_path / "clip.pt")
    assert_close32(load_clip_visual(tmp_path / "clip.pt").encode_image(small["x"]), small["image_embedding"], **SMALL)


def test_farl_bad_files_give_clear_errors(small, tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_farl_style(small), good)
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="truncated.pth"):
        load_clip_visual(cut)

    def bad(name, obj, pattern):
        p = tmp_path / name
        torch.save(obj, p)
        with pytest.raises(CheckpointFormatError, match=pattern) as e:
            FaRLTokens(path=p)
        assert name in str(e.value)

    sd = _farl_style(small)["state_dict"]
    bad("missing.pth", {"state_dict": {k: v for k, v in sd.items() if k != "visual.ln_post.bias"}},
        r"missing keys: visual\.ln_post\.bias")
    bad("extra.pth", {"state_dict": {**sd, "visual.head.weight": torch.zeros(3)}},
        r"unexpected keys: visual\.head\.weight")
    wrong = {**sd, "visual.transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(128, 64)}
    bad("shape.pth", {"state_dict": wrong},
        r"wrong shapes: visual\.transformer\.resblocks\.1\.mlp\.c_fc\.weight \(128, 64\)")
    bad("text_only.pth", {"state_dict": {k: v for k, v in sd.items() if not k.startswith("visual.")}},
        r"no visual\.\* entries")
    bad("no_proj.pth", {k: v for k, v in sd.items() if k != "visual.proj"}, r"lacks visual\.proj")
    bad("list.pth", [1, 2], "holds a list")


def test_farl_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    if any(p.is_file() for p in candidates("farl-vit-b16")):
        pytest.skip("the FaRL weights are installed on this machine")
    with pytest.raises(MissingWeightsError, match=FARL_FILE) as e:
        get_attribute_encoder("farl-vit-b16")
    assert "github.com/FacePerceiver/FaRL" in str(e.value)
    with pytest.raises(FaceAnonyMixerError, match="does not exist"):
        FaRLTokens(path=tmp_path / "nowhere.pth")


def test_farl_attribute_loss(small, one_thread):
    enc = FaRLTokens(net=_small_net(small))
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 64, 64), (2, 3, 256, 256), (2, 3, 80, 64)]:   # native, shrink (antialias), centre crop
        x = torch.rand(shape, generator=g) * 2 - 1
        f = enc.features(x)
        assert [t.shape for t in f] == [(2, 17, 64)]
        assert torch.equal(attribute_loss(f, f), torch.zeros(2))
        y = x.clone().requires_grad_(True)
        loss = attribute_loss(enc.features(y), [t.detach() for t in enc.features(x.flip(-1))])
        assert (loss > 0).all()
        loss.sum().backward()
        assert y.grad is not None and y.grad.abs().sum() > 0
    # preprocessing: [-1,1] -> [0,1], shorter side to the input size, centre crop, no normalisation
    x = torch.rand(1, 3, 80, 64, generator=g) * 2 - 1
    torch.testing.assert_close(enc.preprocess(x), (x[:, :, 8:72] + 1) / 2)
    assert enc.preprocess(torch.zeros(1, 3, 128, 128)).shape == (1, 3, 64, 64)
    torch.testing.assert_close(enc.preprocess(torch.ones(1, 3, 128, 128)), torch.ones(1, 3, 64, 64))
