"""StyleGAN2 Generator/Discriminator, converters, safe pickle loader and weights I/O against the golden fixtures.

Tolerances: tests/_numerics.py, scaled to each compared tensor (README section 11 suggests images atol 1e-4, ws/w
atol 1e-5, extraction exact; the bounds below are of that order). The 512-channel
64 px fixtures are costly on CPU, so each case runs on a slice of its batch (batched into one synthesis call)."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import pytest
import torch

from _numerics import assert_close32
from conftest import load_fixture
from faceanonymixer.errors import CheckpointFormatError
from faceanonymixer.models import stylegan2_convert as conv
from faceanonymixer.models.io import load_state, save_model
from faceanonymixer.models.loading import load_generator
from faceanonymixer.models.safe_pickle import extract_network, load_pickle
from faceanonymixer.models.stylegan2 import Discriminator, Generator

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

# C * sqrt(K * D) * 2^-24 * max|ref| (tests/_numerics.py). Images: the mapping's 8 linear layers (K = 512) and 9
# modulated 3x3 convs + 5 toRGB at 64 px, widest 3x3x512: K = 4608, D = 22 (images reach +-12: bound ~2.2e-4).
# w / ws: the mapping alone, 8 linear layers of K = 512 (bound ~1.1e-5 at |w| ~ 3).
IMG = dict(k=3 * 3 * 512, depth=22)
W = dict(k=512, depth=8)


def img_ok(a, b) -> bool:
    return assert_close32(a.float(), b.float(), **IMG) >= 0


def w_ok(a, b) -> bool:
    return assert_close32(a.float(), b.float(), **W) >= 0


def maxdiff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def bcast(w, n):
    return w.unsqueeze(1).repeat(1, n, 1)


def tiny_generator(resolution=16, **kw):
    kw.setdefault("channels", {2 ** i: 8 for i in range(2, int(math.log2(resolution)) + 1)})
    return Generator(resolution=resolution, z_dim=kw.pop("z_dim", 16), w_dim=kw.pop("w_dim", 16),
                     n_mlp=kw.pop("n_mlp", 2), **kw)


# ------------------------------------------------------------------------------------------------------------
# NVlabs 512-channel state dict

@pytest.fixture(scope="module")
def nv(fixtures_dir):
    d = load_fixture("nvlabs_g64.pt")
    return d, load_generator(fixtures_dir / "nvlabs_g64.pt")


def test_nvlabs_config_and_mapping(nv):
    d, G = nv
    assert (G.resolution, G.z_dim, G.w_dim, G.num_ws, G.n_mlp) == (64, 512, 512, d["num_ws"], 8)
    assert G.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512}
    assert torch.equal(G.latent_avg, d["state_dict"]["mapping.w_avg"])
    with torch.no_grad():
        w = G.mapping(d["z"])
    assert w.shape == (4, 512)
    assert w_ok(bcast(w, G.num_ws), d["ws_psi1"])
    ws = bcast(w, G.num_ws)
    assert w_ok(G.truncate(ws, 0.7), d["ws_psi07"])
    assert w_ok(G.truncate(w, 0.7), d["ws_psi07"][:, 0])            # [N, w_dim] input
    assert w_ok(G.truncate(ws, 0.7, cutoff=4), d["ws_psi07_cutoff4"])
    assert w_ok(G.truncate(w, 0.7, cutoff=4), d["ws_psi07_cutoff4"])  # broadcast to ws
    assert torch.equal(G.truncate(ws, 1.0), ws)


def test_nvlabs_images(nv):
    d, G = nv
    ws = torch.cat([d["ws_psi1"][:2], d["ws_psi07"][:1], d["ws_mix"][:1], d["ws_perlayer"][:2]])
    ref = torch.cat([d["img_const"][:2], d["img_psi07_const"][:1], d["img_mix_const"][:1],
                     d["img_perlayer_const"][:2]])
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const")
        img_none = G.synthesis(d["ws_psi1"][2:3], noise_mode="none")
        img_fwd = G(d["z"][3:4], truncation_psi=1.0, noise_mode="const")
    assert img.shape == (6, 3, 64, 64)
    assert img_ok(img, ref)
    assert img_ok(img_none, d["img_none"][2:3])
    assert img_ok(img_fwd, d["img_G_forward_const"][3:4])
    # style mixing really used both sources and noise really matters (the test could fail otherwise)
    assert maxdiff(d["img_const"][2:3], d["img_none"][2:3]) > 0.1


# ------------------------------------------------------------------------------------------------------------
# NVlabs narrow net via both pickles (safe loader)

@pytest.mark.parametrize("name", ["nvlabs_g64_narrow.pkl", "nvlabs_g64_narrow_p3.pkl"])
def test_pickle_extraction_exact(fixtures_dir, name):
    ref = load_fixture("nvlabs_g64_narrow.pt")
    sd, init_kwargs = extract_network(fixtures_dir / name)
    assert list(sd) == list(ref["state_dict"])
    for k, v in ref["state_dict"].items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert init_kwargs == ref["init_kwargs"]
    assert type(init_kwargs["mapping_kwargs"]) is dict  # EasyDict placeholder turned into a plain dict


@pytest.mark.parametrize("name", ["nvlabs_g64_narrow.pkl", "nvlabs_g64_narrow_p3.pkl", "nvlabs_g64_narrow.pt"])
def test_narrow_images(fixtures_dir, name):
    d = load_fixture("nvlabs_g64_narrow.pt")
    G = load_generator(fixtures_dir / name)
    assert G.channels == {4: 32, 8: 32, 16: 32, 32: 32, 64: 16} and G.n_mlp == 2
    assert G.config["conv_clamp"] == 256
    with torch.no_grad():
        ws = bcast(G.mapping(d["z"]), G.num_ws)
        assert w_ok(ws, d["ws_psi1"])
        assert w_ok(G.truncate(ws, 0.7, cutoff=4), d["ws_psi07_cutoff4"])
        assert img_ok(G.synthesis(d["ws_psi1"], noise_mode="const"), d["img_const"])
        assert img_ok(G.synthesis(d["ws_psi1"], noise_mode="none"), d["img_none"])
        assert img_ok(G.synthesis(d["ws_psi07"]), d["img_psi07_const"])
        assert img_ok(G.synthesis(d["ws_mix"]), d["img_mix_const"])
        assert img_ok(G.synthesis(d["ws_perlayer"]), d["img_perlayer_const"])
        assert img_ok(G(d["z"]), d["img_G_forward_const"])
        for fused in (True, False):  # both modulated-conv paths against the reference
            G.set_fused_modconv(fused)
            assert img_ok(G.synthesis(d["ws_perlayer"]), d["img_perlayer_const"])


def test_narrow_needs_init_kwargs(fixtures_dir):
    """The default 512-channel config cannot hold the narrow weights: a loud error, not a silent mis-load."""
    d = load_fixture("nvlabs_g64_narrow.pt")
    ros, _ = conv.nvlabs_to_rosinality(d["state_dict"])
    with pytest.raises(RuntimeError):
        Generator(resolution=64).load_state_dict(ros, strict=True)


# ------------------------------------------------------------------------------------------------------------
# rosinality

@pytest.fixture(scope="module")
def ros(fixtures_dir):
    ck = load_fixture("rosinality_g64.pt")
    io = load_fixture("rosinality_g64_io.pt")
    G = load_generator(fixtures_dir / "rosinality_g64.pt")
    return ck, io, G


def test_rosinality_strict_native_keys(ros):
    ck, io, _ = ros
    G = Generator(resolution=64, channel_multiplier=2)
    G.load_state_dict(ck["g_ema"], strict=True)  # rosinality names natively, latent_avg optional
    assert (G.num_ws, G.num_noise) == (io["n_latent"], io["num_layers"])
    own = G.state_dict()
    assert set(own) == set(ck["g_ema"]) | {"latent_avg"}


def test_rosinality_mapping_and_images(ros):
    ck, io, G = ros
    assert torch.equal(G.latent_avg, ck["latent_avg"])
    n = G.num_ws
    with torch.no_grad():
        w = G.mapping(io["z"])
        assert w_ok(w, io["w"])
        ws = torch.cat([bcast(io["w"][:1], n),                                    # img_w
                        G.truncate(bcast(io["w"][1:2], n), 0.7),                  # img_w_trunc07
                        io["wplus"][2:3],                                         # img_wplus
                        G.truncate(io["wplus"][3:4], 0.7),                        # img_wplus_trunc07
                        torch.cat([bcast(io["w"][0:1], 3), bcast(io["w"][2:3], n - 3)], 1)])  # img_mix[0]
        img = G.synthesis(ws, noise_mode="const")
        ref = torch.cat([io["img_w"][:1], io["img_w_trunc07"][1:2], io["img_wplus"][2:3],
                         io["img_wplus_trunc07"][3:4], io["img_mix"][:1]])
        assert img_ok(img, ref)
        assert img_ok(G(io["z"][2:3], truncation_psi=0.7), io["img_z_trunc07"][2:3])


def test_rosinality_noise_inputs(ros):
    _, io, G = ros
    ws = bcast(io["w"][:2], G.num_ws)
    with torch.no_grad():
        explicit = G.synthesis(ws, noise=[t[:2] for t in io["noise_list"]])
        zero = G.synthesis(ws[1:2], noise=[torch.zeros(1, 1, r, r) for r, _ in G.noise_shapes])
        none = G.synthesis(ws[1:2], noise_mode="none")
    assert img_ok(explicit, io["img_w_explicit_noise"][:2])
    assert img_ok(zero, io["img_w_zero_noise"][1:2])
    assert img_ok(none, io["img_w_zero_noise"][1:2])
    with pytest.raises(AssertionError):
        G.synthesis(ws, noise=io["noise_list"][:3])


def test_e4e_decoder_and_registry_name(fixtures_dir, tmp_path, monkeypatch):
    """e4e layout (state_dict with encoder.*/decoder.*, W+ latent_avg) and lookup by registry name."""
    d = load_fixture("nvlabs_g64_narrow.pt")
    ros, w_avg = conv.nvlabs_to_rosinality(d["state_dict"])
    sd = {"encoder.input_layer.0.weight": torch.zeros(4, 3, 3, 3)}
    sd.update({"decoder." + k: v for k, v in ros.items()})
    p = tmp_path / "e4e_like.pt"
    torch.save({"state_dict": sd, "latent_avg": w_avg.repeat(10, 1), "opts": {"stylegan_size": 64}}, p)
    G = load_generator(p)
    assert torch.allclose(G.latent_avg, w_avg, atol=1e-6)
    with torch.no_grad():
        assert img_ok(G.synthesis(d["ws_psi1"][:2]), d["img_const"][:2])
    # registry name -> $FACEANONYMIXER_HOME/<file>
    from faceanonymixer.registry import get_spec
    spec = get_spec("fam-stylegan2-64")
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    save_model(G, tmp_path / spec.filename, G.config, {})
    G2 = load_generator("fam-stylegan2-64")
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))
    from faceanonymixer.errors import MissingWeightsError
    with pytest.raises(MissingWeightsError):
        load_generator(tmp_path / "does_not_exist.pt")


def test_rosinality_training_checkpoint_with_args(tmp_path):
    """rosinality train.py checkpoints hold an argparse.Namespace: readable weights-only, g_ema is used."""
    import argparse
    d = load_fixture("nvlabs_g64_narrow.pt")
    ros, la = conv.nvlabs_to_rosinality(d["state_dict"])
    p = tmp_path / "train_ckpt.pt"
    torch.save({"g": ros, "d": {}, "g_ema": ros, "latent_avg": la, "args": argparse.Namespace(size=64)}, p)
    G = load_generator(p)
    with torch.no_grad():
        assert img_ok(G.synthesis(d["ws_psi1"][:1]), d["img_const"][:1])


# ------------------------------------------------------------------------------------------------------------
# Converter

def _json_transform(t: str) -> str:
    return {"copy (stored next to g_ema, not inside it)": conv.LATENT_AVG,
            "multiply by 4 (=up^2)": conv.KERNEL_X4}.get(t, conv.DROP if t.startswith("drop") else t)


def test_keymap_matches_json(fixtures_dir):
    table = json.loads((fixtures_dir / "nvlabs_rosinality_keymap_g64.json").read_text())
    want = {r["nvlabs_key"]: (r["rosinality_key"], _json_transform(r["transform"])) for r in table["rows"]}
    got = {nv: (ros, t) for nv, ros, t in conv.keymap(64, 8)}
    assert len(table["rows"]) == 106 and got == want
    # key order equals the NVlabs state dict order
    assert [nv for nv, _, _ in conv.keymap(64, 8)] == list(load_fixture("nvlabs_g64.pt")["state_dict"])


def test_convert_both_ways(fixtures_dir):
    nvd = load_fixture("nvlabs_g64.pt")["state_dict"]
    table = json.loads((fixtures_dir / "nvlabs_rosinality_keymap_g64.json").read_text())
    ros, w_avg = conv.nvlabs_to_rosinality(nvd)
    assert torch.equal(w_avg, nvd["mapping.w_avg"])
    for r in table["rows"]:
        if r["rosinality_key"] and r["rosinality_key"] != "latent_avg":
            assert list(ros[r["rosinality_key"]].shape) == r["rosinality_shape"], r
    back = conv.rosinality_to_nvlabs(ros, w_avg)
    assert list(back) == list(nvd) and all(torch.equal(back[k], nvd[k]) for k in nvd)

    ck = load_fixture("rosinality_g64.pt")
    nv2 = conv.rosinality_to_nvlabs(ck["g_ema"], ck["latent_avg"])
    ros2, la2 = conv.nvlabs_to_rosinality(nv2)
    assert set(ros2) == set(ck["g_ema"]) and all(torch.equal(ros2[k], ck["g_ema"][k]) for k in ros2)
    assert torch.equal(la2, ck["latent_avg"])
    # converted values are fresh tensors: editing them must not touch the (storage-sharing) source
    ros2["style.1.weight"].zero_()
    assert ck["g_ema"]["style.1.weight"].abs().sum() > 0


def test_rosinality_to_nvlabs_image(fixtures_dir, tmp_path):
    """rosinality weights -> NVlabs names -> loaded back through the NVlabs path reproduces img_wplus."""
    ck, io = load_fixture("rosinality_g64.pt"), load_fixture("rosinality_g64_io.pt")
    p = tmp_path / "nv.pt"
    torch.save(conv.rosinality_to_nvlabs(ck["g_ema"], ck["latent_avg"]), p)
    G = load_generator(p)
    with torch.no_grad():
        assert img_ok(G.synthesis(io["wplus"][:1]), io["img_wplus"][:1])


def test_real_1024_layouts(fixtures_dir):
    """Key names and shapes of the real 1024 checkpoints (rosinality, e4e decoder, NVlabs via the converter)."""
    lay = json.loads((fixtures_dir / "real_checkpoint_layouts.json").read_text())
    with torch.device("meta"):
        G = Generator(resolution=1024)
    own = {k: list(v.shape) for k, v in G.state_dict().items() if k != "latent_avg"}
    ros = {k[len("g_ema."):]: s for k, s, _ in lay["rosinality_ckpt_1024"]["keys"] if k.startswith("g_ema.")}
    assert own == ros and G.num_ws == 18
    dec = {k[len("state_dict/decoder."):]: s for k, s, _ in lay["e4e_ffhq_encode"]["keys"]
           if k.startswith("state_dict/decoder.")}
    assert own == dec
    nvl = lay["nvlabs_G_ema_ffhq1024"]
    nv_sd = {k: torch.empty(s, device="meta") for k, s, _ in nvl["keys"]}
    conv_sd, w_avg = conv.nvlabs_to_rosinality(nv_sd)
    assert {k: list(v.shape) for k, v in conv_sd.items()} == own and list(w_avg.shape) == [512]
    kw = conv.generator_kwargs_from_nvlabs(nvl["constructor"])
    assert kw["conv_clamp"] == 256 and kw["n_mlp"] == 8
    with torch.device("meta"):
        G2 = Generator(**kw)
    assert {k: list(v.shape) for k, v in G2.state_dict().items() if k != "latent_avg"} == own


# ------------------------------------------------------------------------------------------------------------
# Safe pickle: malicious payloads, truncation, wrong files

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilEval])
@pytest.mark.parametrize("protocol", [3, 4])
def test_malicious_pickle_refused(tmp_path, evil_cls, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": evil_cls(marker)}, protocol=protocol))
    with pytest.raises(CheckpointFormatError) as e:
        load_pickle(path)
    assert str(path) in str(e.value) and ("system" in str(e.value) or "eval" in str(e.value))
    with pytest.raises(CheckpointFormatError):
        load_generator(path)
    assert not marker.exists()


def test_truncated_files(fixtures_dir, tmp_path):
    for name in ["nvlabs_g64_narrow.pt", "nvlabs_g64_narrow.pkl"]:
        data = (fixtures_dir / name).read_bytes()
        p = tmp_path / name
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointFormatError) as e:
            load_generator(p)
        assert str(p) in str(e.value)


def test_wrong_architecture_and_not_a_checkpoint(fixtures_dir, tmp_path):
    d = load_fixture("nvlabs_g64_narrow.pt")
    ros, la = conv.nvlabs_to_rosinality(d["state_dict"])
    # a shape that contradicts the rest of the network
    bad = dict(ros)
    bad["convs.3.conv.weight"] = torch.zeros(1, 32, 16, 3, 3)
    p = tmp_path / "bad_shape.pt"
    torch.save({"g_ema": bad, "latent_avg": la}, p)
    with pytest.raises(CheckpointFormatError, match="bad_shape.pt"):
        load_generator(p)
    # a missing layer
    bad = {k: v for k, v in ros.items() if not k.startswith("convs.5.")}
    p = tmp_path / "missing.pt"
    torch.save({"g_ema": bad, "latent_avg": la}, p)
    with pytest.raises(CheckpointFormatError, match="missing.pt"):
        load_generator(p)
    # our format with a config that does not match the weights
    G = Generator(**conv.generator_kwargs_from_nvlabs(d["init_kwargs"]))
    cfg = dict(G.config, channel_max=64)
    save_model(G, tmp_path / "mismatch.safetensors", cfg, {})
    with pytest.raises(CheckpointFormatError, match="mismatch.safetensors"):
        load_generator(tmp_path / "mismatch.safetensors")
    # an unrelated state dict and a non-checkpoint file
    p = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, p)
    with pytest.raises(CheckpointFormatError, match="other.pt"):
        load_generator(p)
    p = tmp_path / "notes.pt"
    p.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="notes.pt"):
        load_generator(p)


# ------------------------------------------------------------------------------------------------------------
# Weights I/O

def test_io_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    G = tiny_generator(32)
    G.latent_avg.normal_()
    path = save_model(G, tmp_path / "g.safetensors", G.config, {"note": "test"})
    assert path.is_file() and (tmp_path / "g.json").is_file()
    state, config = load_state(path)
    ref = G.state_dict()
    assert list(state) == list(ref) or set(state) == set(ref)
    assert all(state[k].dtype == ref[k].dtype and torch.equal(state[k], ref[k]) for k in ref)
    assert config == json.loads(json.dumps(G.config))
    G2 = load_generator(path)
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G2(z), G.eval()(z))
    # fp16 storage: cast back to float32, values are the fp16-rounded originals
    p16 = save_model(G, tmp_path / "g16.safetensors", G.config, {}, fp16=True)
    assert p16.stat().st_size < path.stat().st_size
    s16, _ = load_state(p16)
    assert all(s16[k].dtype == torch.float32 and torch.equal(s16[k], ref[k].half().float()) for k in ref)
    # the JSON is optional: the config is also inside the safetensors metadata
    shutil.move(tmp_path / "g.json", tmp_path / "elsewhere.json")
    assert load_state(path)[1] == config


# ------------------------------------------------------------------------------------------------------------
# Architecture: resolutions, autocast/channels_last, gradients, Discriminator

@pytest.mark.parametrize("resolution", [32, 128])
def test_generator_resolutions(resolution):
    torch.manual_seed(0)
    G = Generator(resolution=resolution, z_dim=32, w_dim=32, n_mlp=2, channel_base=512, channel_max=16)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2 and len(G.noise_shapes) == G.num_ws - 1
    assert G.channels[resolution] == min(512 // resolution, 16)
    z = torch.randn(2, 32)
    with torch.no_grad():
        img = G(z, noise_mode="random")
        img_c = G(z, truncation_psi=0.5, truncation_cutoff=2)
    assert img.shape == img_c.shape == (2, 3, resolution, resolution)
    assert torch.isfinite(img).all()
    G2 = Generator(**json.loads(json.dumps(G.config)))   # config survives JSON
    assert G2.channels == G.channels


def test_channel_rules():
    assert Generator(resolution=8, channel_multiplier=1).channels == {4: 512, 8: 512}
    from faceanonymixer.models.stylegan2 import channels_for
    assert channels_for(1024, channel_multiplier=2) == channels_for(1024, channel_base=32768, channel_max=512)
    assert channels_for(256, channel_multiplier=1)[256] == 64


def test_fused_and_shared_modconv_agree():
    torch.manual_seed(0)
    G = tiny_generator(16, fused_modconv=True)
    G2 = tiny_generator(16, fused_modconv=False)
    G2.load_state_dict(G.state_dict())
    ws = torch.randn(3, G.num_ws, 16)
    with torch.no_grad():
        # the same math in another order: the float32 bound of 3x3x8 reductions through 3 + 2 * 3 modulated convs
        assert_close32(G.synthesis(ws), G2.synthesis(ws), k=3 * 3 * 8, depth=9)


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_channels_last(fused):
    torch.manual_seed(0)
    G = tiny_generator(16, fused_modconv=fused).to("cpu", memory_format=torch.channels_last)
    D = Discriminator(16, channels={4: 8, 8: 8, 16: 8}).to("cpu", memory_format=torch.channels_last)
    assert G.convs[0].conv.weight.shape == (1, 8, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(torch.randn(4, 16), noise_mode="random")
        logits = D(img.contiguous(memory_format=torch.channels_last))
    assert img.shape == (4, 3, 16, 16) and logits.shape == (4, 1)
    logits.float().sum().backward()
    assert torch.isfinite(G.style[1].weight.grad).all() and G.convs[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
def test_generator_gradcheck(fused):
    torch.manual_seed(0)
    G = Generator(resolution=8, z_dim=4, w_dim=4, n_mlp=1, channels={4: 2, 8: 2}, fused_modconv=fused).double()
    ws = torch.randn(2, G.num_ws, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: G.synthesis(x, noise_mode="const"), (ws,), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


def test_discriminator_shape_and_gradcheck():
    torch.manual_seed(0)
    D = Discriminator(resolution=64, channels={4: 16, 8: 16, 16: 8, 32: 8, 64: 8})
    x = torch.randn(6, 3, 64, 64)
    assert D(x).shape == (6, 1)
    assert D(x[:3]).shape == (3, 1)        # stddev group shrinks to a divisor of N
    Dt = Discriminator(resolution=8, channels={4: 2, 8: 2}).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Dt, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    with pytest.raises(AssertionError):
        D(torch.randn(2, 3, 32, 32))
