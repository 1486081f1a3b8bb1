"""Single-image augmentation, the Protector on real sample photos (tiny random models), determinism, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tiny import tiny_protector
from PIL import Image

from faceanonymixer.keys import Key
from faceanonymixer.mixing import mix
from faceanonymixer.models.e4e import E4EInverter
from faceanonymixer.optimize import augment, single_image_group
from faceanonymixer.pipeline import Protector, save_person, to_uint8
from faceanonymixer.registry import data_dir

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

SAMPLES = data_dir() / "samples"
SECRET = bytes(range(100, 132))


@pytest.fixture(scope="module")
def protector():
    return tiny_protector(steps=1, augment_copies=2)


def test_augment_is_seeded_and_mild():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a, b, c = augment(x, 5, 7), augment(x, 5, 7), augment(x, 5, 8)
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    d = (a - x).abs().mean((1, 2, 3))
    assert (d > 0.01).all() and (d < 0.8).all()                 # changed, but still the same picture
    assert len({tuple(t.flatten()[:20].tolist()) for t in a}) == 5   # copies differ from each other
    g = single_image_group(x, torch.zeros(1, 8, 4), torch.ones(1, 8, 4), 5, 7)
    assert g.x_ref.shape[0] == 6 and g.n_out == 1 and torch.equal(g.x_ref[0], x[0])
    assert torch.equal(g.w_real, torch.zeros(6, 8, 4))


def test_protect_real_photos_deterministic_with_bad_items(protector, tmp_path):
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(tmp_path / "blank.png")      # no face
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    grey = Image.open(SAMPLES / "obama2.jpg").convert("L")
    grey.save(tmp_path / "grey.png")
    a, b = np.asarray(Image.open(SAMPLES / "obama.jpg").convert("RGB")), np.asarray(Image.open(SAMPLES / "biden.jpg").convert("RGB"))
    h = min(len(a), len(b))
    Image.fromarray(np.concatenate([a[:h], b[:h]], axis=1)).save(tmp_path / "two.png")  # two people: ambiguous
    key = Key(SECRET)
    people = [[SAMPLES / "obama.jpg", tmp_path / "grey.png", tmp_path / "corrupt.jpg"],
              [SAMPLES / "biden.jpg", tmp_path / "two.png"], [tmp_path / "blank.png"]]
    r1 = protector.protect_people(people, key, ["obama", "biden", "nobody"])
    r2 = protector.protect_people(people, key, ["obama", "biden", "nobody"])
    assert [r.name for r in r1.results] == ["obama", "biden"]
    bad = " ".join(f"{i} {m}" for i, m in r1.failures)
    assert "corrupt.jpg" in bad and "blank.png" in bad and "nobody" in bad
    assert "two.png: 2 faces of similar size" in bad
    assert r1.results[0].images.shape == (2, 3, 32, 32) and r1.results[1].images.shape == (1, 3, 32, 32)
    for a, b in zip(r1.results, r2.results):                  # bit-identical
        assert np.array_equal(to_uint8(a.images), to_uint8(b.images))
    other = protector.protect_people([people[0][:1]], Key(bytes(32)), ["obama"])
    assert not np.array_equal(to_uint8(other.results[0].images[0]), to_uint8(r1.results[0].images[0]))
    paths = save_person(r1.results[0], tmp_path / "out", protector)
    assert [p.name for p in paths] == ["obama.png", "grey.png"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), to_uint8(r1.results[0].images[0]))
    side = json.loads((tmp_path / "out" / "obama.json").read_text())
    assert side["key_fingerprint"] == key.fingerprint and side["config_hash"] and side["models"]["generator"]["sha256"]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())
    assert SECRET not in blob and SECRET.hex().encode() not in blob
    assert "latent" not in json.dumps(side).lower()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_steps_zero_is_the_naive_mix(protector):
    torch.manual_seed(1)
    G = protector.generator
    ws = G.truncate(G.mapping(torch.randn(2, 32)), 0.7)[:, None].repeat(1, G.num_ws, 1)
    faces = list(protector.synthesise(ws))
    key = Key(SECRET)
    res = protector.protect_people([faces], key, ["synthetic"], steps=0).results[0]
    x = torch.stack([protector.load_face(f)[0][0] for f in faces])
    w0, _ = mix(protector.encode(x), protector.key_code(key), protector.plan)
    assert torch.equal(res.ws, w0)
    assert torch.equal(res.images, protector.synthesise(w0))


def test_batched_equals_serial(protector):
    torch.manual_seed(2)
    G = protector.generator
    ws = G.truncate(G.mapping(torch.randn(4, 32)), 0.7)[:, None].repeat(1, G.num_ws, 1)
    f = list(protector.synthesise(ws))
    keys = [Key(SECRET), Key(bytes(32))]
    both = protector.protect_people([f[:2], f[2:]], keys, ["a", "b"]).results
    alone = [protector.protect_people([f[:2]], keys[:1], ["a"]).results[0],
             protector.protect_people([f[2:]], keys[1:], ["b"]).results[0]]
    for x, y in zip(both, alone):
        assert torch.allclose(x.ws, y.ws, atol=1e-4)


def test_refine_latents_lowers_reconstruction_error_and_leaves_generator_alone():
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.pipeline import RefineConfig, refine_latents
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16}).eval()
    G.requires_grad_(False)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        target_ws = G.mapping(torch.randn(2, 32))[:, None].repeat(1, G.num_ws, 1)
        x = G.synthesis(target_ws, noise_mode="const")
        start = G.mapping(torch.randn(2, 32))[:, None].repeat(1, G.num_ws, 1)
    ws = refine_latents(G, start, x, RefineConfig(steps=30, lr=0.02), attr=None)
    assert ws.shape == start.shape and not ws.requires_grad
    with torch.no_grad():
        err0 = (G.synthesis(start, noise_mode="const") - x).square().mean()
        err1 = (G.synthesis(ws, noise_mode="const") - x).square().mean()
    assert err1 < 0.5 * err0, (float(err0), float(err1))
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())
    with pytest.raises(AssertionError):
        refine_latents(G, start[:1], x, RefineConfig(steps=1))


def test_refine_latents_lpips_objective_at_a_smaller_size():
    """refine.loss 'lpips' (the paper's objective: LPIPS + w_mse * MSE, compared after an area resize to
    refine.size) lowers that objective; images do not interact; a missing network or unknown loss is refused."""
    from faceanonymixer.config import ConfigError
    from faceanonymixer.models.irse import resize_to
    from faceanonymixer.models.lpips import LPIPS
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.pipeline import RefineConfig, refine_latents
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16}).eval()
    G.requires_grad_(False)
    lp = LPIPS("vgg")
    with torch.no_grad():
        for p in lp.lins:
            p.fill_(1.0)
        x = G.synthesis(G.mapping(torch.randn(2, 32))[:, None].repeat(1, G.num_ws, 1), noise_mode="const")
        start = G.mapping(torch.randn(2, 32))[:, None].repeat(1, G.num_ws, 1)
    rc = RefineConfig(steps=10, lr=0.02, loss="lpips", w_perc=1.0, w_mse=0.1, size=16)

    def objective(ws):
        with torch.no_grad():
            y, t = resize_to(G.synthesis(ws, noise_mode="const"), 16), resize_to(x, 16)
            return lp(y, t) + 0.1 * (y - t).square().mean((1, 2, 3))
    ws = refine_latents(G, start, x, rc, lpips=lp)
    assert ws.shape == start.shape and (objective(ws) < 0.85 * objective(start)).all()
    alone = refine_latents(G, start[1:], x[1:], rc, lpips=lp)
    assert torch.allclose(alone, ws[1:], atol=5e-3)   # batch-size rounding, amplified by Adam near zero grads
    with pytest.raises(ConfigError, match="no LPIPS network"):
        refine_latents(G, start, x, rc)
    with pytest.raises(ConfigError, match="refine.loss must be one of"):
        refine_latents(G, start, x, RefineConfig(steps=1, loss="l2"))


def test_protector_lpips_refinement_loads_or_says_what_is_missing(protector, tmp_path, monkeypatch):
    from dataclasses import replace

    from faceanonymixer.config import ConfigError
    from faceanonymixer.errors import MissingWeightsError
    from faceanonymixer.models.lpips import LPIPS
    from faceanonymixer.pipeline import RefineConfig
    nets = dict(generator=protector.generator, inverter=protector.inverter, id_net=protector.id_net,
                attr_net=protector.attr)
    cfg = replace(protector.config, refine=RefineConfig(steps=2, loss="lpips", lpips_net="vgg"))
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"vgg16-397923af\.pth"):   # the backbone is user-supplied
        Protector(cfg, **nets)
    assert Protector(replace(cfg, refine=RefineConfig(steps=0, loss="lpips")), **nets).lpips is None  # not needed
    p = Protector(cfg, lpips=LPIPS("vgg"), **nets)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert p.invert(x).shape == (2, protector.generator.num_ws, protector.generator.w_dim)
    assert p.model_info["lpips"]["name"] == "lpips-vgg"
    with pytest.raises(ConfigError, match="refine.loss must be one of"):
        Protector(replace(cfg, refine=RefineConfig(steps=1, loss="l1")), **nets)


@pytest.mark.parametrize("head_on_key_layers", [True, False])
def test_identity_head_on_the_key_layers_never_reaches_a_protected_face(protector, head_on_key_layers):
    """Under the readme plan the key's layers replace the real code's, so an encoder identity head that writes only
    there (our shipped encoder: band 1-6) cannot change what protect produces; on a real layer it would."""
    from faceanonymixer.fr import get_recogniser
    from faceanonymixer.models.id_head import IdentityHead
    torch.manual_seed(3)
    G = protector.generator
    plan = protector.plan
    real_layers = [i for i in range(G.num_ws) if i not in plan.key_layers and i not in plan.optimised_layers]
    assert real_layers, "the test needs a layer that comes from the real face"
    layers = sorted(set(plan.key_layers) | set(plan.optimised_layers)) if head_on_key_layers else real_layers[:1]
    head = IdentityHead(layers, emb_dim=128, hidden=16, w_dim=G.w_dim)
    torch.nn.init.normal_(head.mlp[-1].weight, std=0.5)  # a head that moves its layers a lot
    inv = protector.inverter
    with_head = Protector(protector.config, generator=G,
                          inverter=E4EInverter(inv.encoder, inv.latent_avg, id_head=head, id_net=get_recogniser("sface")))
    ws = G.truncate(G.mapping(torch.randn(2, 32)), 0.7)[:, None].repeat(1, G.num_ws, 1)
    faces = list(protector.synthesise(ws))
    key = Key(SECRET)
    a = protector.protect_people([faces], key, ["p"]).results[0]
    b = with_head.protect_people([faces], key, ["p"]).results[0]
    x = torch.stack([protector.load_face(f)[0][0] for f in faces])
    assert not torch.allclose(with_head.encode(x)[:, layers], protector.encode(x)[:, layers], atol=1e-3)
    if head_on_key_layers:
        assert torch.equal(a.images, b.images) and torch.equal(a.ws, b.ws)
    else:
        assert not torch.allclose(a.images, b.images, atol=1e-4)
