"""IR-SE50 backbone and e4e encoder against the golden fixtures (shared/fixtures/README.md sections 8-11)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from _numerics import assert_close32
from conftest import load_fixture
from faceanonymixer.errors import CheckpointFormatError, MissingWeightsError
from faceanonymixer.models.e4e import E4EInverter, Encoder4Editing, load_e4e, n_styles_for, progressive_stage_value
from faceanonymixer.models.irse import ArcFaceIRSE50, Backbone, load_irse50, psp_crop_pool

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

# Tolerances (tests/_numerics.py): C * sqrt(K * D) * 2^-24 * max|ref|, K the longest reduction, D the reducing layers.
# The README's section 11 suggests atol 1e-5 for IR-SE50 *embeddings* (|e| <= 0.19); the body output reaches 6.8 and
# differs by 1.9e-5 (AVX2) / 2.1e-5 (SSE4.1) on other CPUs, so each tensor is held to its own scale.
IRSE_BODY = dict(k=3 * 3 * 512, depth=49)        # input conv + 24 IR-SE units x two 3x3 convs; widest: 3x3x512
IRSE_OUT = dict(k=512 * 7 * 7, depth=50)         # + the output Linear(512*7*7 -> 512); emb = its L2 normalisation
E4E_C3 = dict(k=3 * 3 * 512, depth=49)           # the same IR-SE50 body at 256 px
E4E_CODES = dict(k=3 * 3 * 512, depth=57)        # + FPN lateral conv, up to 6 stride-2 3x3 convs of a style head, linear
POOL = dict(k=3 * 3, depth=1)                    # an area average of at most 3x3 pixels (256 -> 188 crop -> 112)


def _layout(model: torch.nn.Module) -> list[tuple[str, tuple, str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def _close(a: torch.Tensor, b: torch.Tensor, depth: dict) -> None:
    assert_close32(a, b, **depth)


# --- fixtures (module scope: loading the 256-px e4e materialises ~840 MB once) -----------------------------------

@pytest.fixture(scope="module")
def irse(fixtures_dir):
    ref = load_fixture("irse50.pt")
    return load_irse50(fixtures_dir / "irse50.pt"), ref


@pytest.fixture(scope="module")
def e4e(fixtures_dir):
    ref = load_fixture("e4e_enc.pt")
    return load_e4e(fixtures_dir / "e4e_enc.pt"), ref


@pytest.fixture(scope="module")
def layouts(fixtures_dir):
    return json.loads((fixtures_dir / "real_checkpoint_layouts.json").read_text())


# --- key layouts -----------------------------------------------------------------------------------------------

def test_irse50_layout_matches_real_checkpoint(layouts):
    with torch.device("meta"):
        model = Backbone(112)
    expected = [(k, tuple(s), dt) for k, s, dt in layouts["model_ir_se50"]["keys"]]
    assert _layout(model) == expected  # names, shapes, dtypes and order


def test_e4e_layout_matches_real_checkpoint_18_styles(layouts):
    sec = layouts["e4e_ffhq_encode"]
    prefix = "state_dict/encoder."
    expected = [(k[len(prefix):], tuple(s), dt) for k, s, dt in sec["keys"] if k.startswith(prefix)]
    with torch.device("meta"):
        model = Encoder4Editing(n_styles=n_styles_for(sec["constructor"]["stylegan_size"]))
    assert model.n_styles == 18
    assert _layout(model) == expected
    la = [s for k, s, _ in sec["keys"] if k == "latent_avg"]
    assert la == [[18, 512]]


def test_e4e_fixture_layout_is_14_styles(e4e):
    loaded, ref = e4e
    assert loaded.encoder.n_styles == 14 and loaded.encoder.input_size == 256
    got = {"encoder." + k: tuple(v.shape) for k, v in loaded.encoder.state_dict().items()}
    assert got == {k: tuple(v.shape) for k, v in ref["state_dict"].items()}
    assert loaded.decoder_state_dict is None  # the fixture carries no decoder.* keys
    assert loaded.latent_avg.shape == (14, 512)


# --- IR-SE50 numerics ------------------------------------------------------------------------------------------

def test_irse50_loads_exact_weights_without_touching_the_source(irse):
    model, ref = irse
    sd = model.state_dict()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for k, v in ref["state_dict"].items():
        assert torch.equal(sd[k], v), k
    assert ref["state_dict"]["output_layer.3.weight"].stride() == (4099, 1)  # still the aliased original


def test_irse50_forward_112(irse):
    model, ref = irse
    x = ref["input_112"]
    with torch.no_grad():
        body = model.features(x)
        pre = model.output_layer(body)
        emb = model(x)
    _close(body, ref["body_out_112"], IRSE_BODY)
    _close(pre, ref["pre_l2norm_112"], IRSE_OUT)
    _close(emb, ref["emb_112"], IRSE_OUT)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-6)


def test_irse50_psp_crop_pool_256(irse):
    model, ref = irse
    assert ref["crop_rows"] == [35, 223] and ref["crop_cols"] == [32, 220]
    x = ref["input_256"]
    _close(psp_crop_pool(x), ref["pooled_112_from_256"], POOL)
    wrapper = ArcFaceIRSE50(model, psp_crop=True)
    x512 = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # area-downscales back to x
    with torch.no_grad():
        _close(wrapper(x), ref["emb_256"], IRSE_OUT)
        _close(wrapper(x512), ref["emb_256"], IRSE_OUT)
        _close(ArcFaceIRSE50(model)(ref["input_112"]), ref["emb_112"], IRSE_OUT)


# --- e4e numerics ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def e4e_feats(e4e):
    """Body features of the fixture input, computed once (the body is half the cost of a 256-px forward)."""
    loaded, ref = e4e
    with torch.no_grad():
        return loaded.encoder.body_features(ref["input"])


def test_e4e_c3_and_w0(e4e, e4e_feats):
    loaded, ref = e4e
    c1, c2, c3 = e4e_feats
    assert c1.shape == (2, 128, 64, 64) and c2.shape == (2, 256, 32, 32)
    _close(c3, ref["c3"], E4E_C3)
    with torch.no_grad():
        _close(loaded.encoder.styles[0](c3), ref["w0"], E4E_CODES)


@pytest.mark.parametrize("stage", [0, 3, 7, "Inference"])
def test_e4e_codes_per_progressive_stage(e4e, e4e_feats, stage):
    loaded, ref = e4e
    assert ref["progressive_stage_value"] == progressive_stage_value(ref["progressive_stage"]) == 18
    name = "codes_no_latent_avg" if stage == "Inference" else f"codes_stage{stage}_no_latent_avg"
    with torch.no_grad():
        codes = loaded.encoder.styles_from_features(*e4e_feats, progressive_stage=stage)
    _close(codes, ref[name], E4E_CODES)
    if stage != "Inference":  # layers past the stage carry w0 exactly
        assert torch.equal(codes[:, stage + 1:], codes[:, :1].expand(-1, 13 - stage, -1))


def test_e4e_inverter_full_forward(e4e):
    """The whole path: resize to the encoder input, body, heads (default stage = Inference), + latent_avg."""
    loaded, ref = e4e
    inv = loaded.inverter()
    assert isinstance(inv, E4EInverter) and (inv.num_ws, inv.w_dim, inv.input_size) == (14, 512, 256)
    # At a generator resolution of 512 the inverter area-resizes to 256 (exact for a 2x nearest upsample).
    x512 = ref["input"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        _close(inv.encode(x512), ref["codes"], E4E_CODES)


# --- configurable (small) variants, and the loader on a small e4e-format file ---------------------------------

def _small_encoder(**kw) -> Encoder4Editing:
    torch.manual_seed(0)
    cfg = dict(n_styles=10, input_size=64, units=(1, 2, 2, 1), channels=(16, 24, 32, 48), style_hidden=64)
    cfg.update(kw)
    return Encoder4Editing(**cfg).eval()


def test_small_encoder_and_backbone_shapes_and_gradients():
    enc = _small_encoder()
    assert [len(s.convs) // 2 for s in enc.styles] == [2] * 3 + [3] * 4 + [4] * 3  # 4x4, 8x8, 16x16 heads
    inv = E4EInverter(enc, torch.randn(512))  # pSp-style [512] latent_avg is broadcast to every layer
    x = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    ws = inv.encode(x)
    assert ws.shape == (2, 10, 512)
    ws.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    bb = Backbone(64, units=(1, 1, 1, 1), channels=(8, 16, 16, 32), embedding_dim=128).eval()
    emb = bb(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-6)
    assert Backbone(64, units=(1, 1, 1, 1), channels=(8, 16, 16, 32), mode="ir").state_dict().keys().isdisjoint(
        {"body.0.res_layer.5.fc1.weight"})


def test_load_e4e_small_with_decoder(tmp_path):
    enc = _small_encoder()
    latent_avg = torch.randn(10, 512)
    sd = {"encoder." + k: v for k, v in enc.state_dict().items()}
    sd["decoder.style.1.weight"] = torch.randn(4, 4)
    sd["decoder.input.input"] = torch.randn(1, 8, 4, 4)
    path = tmp_path / "small_e4e.pt"
    torch.save({"state_dict": sd, "latent_avg": latent_avg, "opts": {"stylegan_size": 64}}, path)
    loaded = load_e4e(path, input_size=64)
    assert loaded.encoder.config["units"] == (1, 2, 2, 1) and loaded.encoder.config["channels"] == (16, 24, 32, 48)
    assert set(loaded.decoder_state_dict) == {"style.1.weight", "input.input"}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.inverter().encode(x), enc(x) + latent_avg)


# --- errors ----------------------------------------------------------------------------------------------------

def test_truncated_files_raise(tmp_path, fixtures_dir):
    for name, loader in (("irse50.pt", load_irse50), ("e4e_enc.pt", load_e4e)):
        data = (fixtures_dir / name).read_bytes()
        bad = tmp_path / f"truncated_{name}"
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointFormatError, match=bad.name):
            loader(bad)
    with pytest.raises(MissingWeightsError, match="nope.pt"):
        load_irse50(tmp_path / "nope.pt")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "namespace_opts.pt"
    torch.save({"state_dict": {}, "opts": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        load_e4e(path)


def test_wrong_architecture_raises(tmp_path):
    # An IR-SE50 state dict with a missing key / a wrong shape.
    with torch.device("meta"):
        ref = Backbone(112)
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in ref.state_dict().items()}
    bad = dict(sd)
    del bad["output_layer.4.running_var"]
    bad["output_layer.3.weight"] = torch.zeros(512, 100)
    path = tmp_path / "wrong_irse.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointFormatError, match=r"wrong_irse\.pth.*output_layer\.4\.running_var") as ei:
        load_irse50(path)
    assert "output_layer.3.weight (512, 100)" in str(ei.value)
    # The same ArcFace weights presented as an e4e encoder: no style heads.
    path = tmp_path / "irse_as_e4e.pt"
    torch.save({"state_dict": {"encoder." + k: v for k, v in sd.items()}, "latent_avg": torch.zeros(14, 512)}, path)
    with pytest.raises(CheckpointFormatError, match="irse_as_e4e.pt"):
        load_e4e(path)
    # An e4e file whose encoder has a head of the wrong width.
    enc = _small_encoder()
    esd = {"encoder." + k: v for k, v in enc.state_dict().items()}
    esd["encoder.styles.4.convs.2.weight"] = torch.zeros(64, 32, 3, 3)
    path = tmp_path / "bad_head.pt"
    torch.save({"state_dict": esd, "latent_avg": torch.zeros(10, 512)}, path)
    with pytest.raises(CheckpointFormatError, match=r"bad_head\.pt.*styles\.4\.convs\.2\.weight"):
        load_e4e(path, input_size=64)
    # Not an e4e checkpoint at all (a plain state dict).
    with pytest.raises(CheckpointFormatError, match="state_dict"):
        load_e4e(tmp_path / "wrong_irse.pth")
