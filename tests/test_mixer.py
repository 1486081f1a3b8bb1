"""The feed-forward mixer (mixer.py) with tiny random models: shapes, band-only edits, the naive mix at alpha 0,
the key rotation, weights round trip, protection through a Protector, and the trainer (loss goes down, resume
is exact). A tiny random conv net behind the Recogniser API stands in for the loss net (SFace costs ~0.2 s per
face and step on this CPU); one step runs with the real SFace and its attribute term (a registry package, no
../shared needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from faceanonymixer import mixer as mx
from faceanonymixer.config import ConfigError, load
from faceanonymixer.errors import CheckpointFormatError, FaceAnonyMixerError
from faceanonymixer.fr import get_recogniser
from faceanonymixer.fr.base import Recogniser
from faceanonymixer.keys import Key, key_psi, key_wplus
from faceanonymixer.mixing import make_plan, mix
from faceanonymixer.models.e4e import E4EInverter, Encoder4Editing
from faceanonymixer.models.stylegan2 import Discriminator, Generator
from faceanonymixer.pipeline import ProtectConfig, Protector
from faceanonymixer.train.mixer import MixerTrainConfig, MixerTrainer, export_checkpoint
from faceanonymixer.train.mixer_loss import MixerLossConfig

R = 32


class TinyRecogniser(Recogniser):
    """A small random conv net with the Recogniser API (112x112 ArcFace crops -> 128-D, differentiable)."""
    name, dim, differentiable, white_box = "tiny", 128, True, True

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Conv2d(8, 16, 4, 4), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 128))
        self.requires_grad_(False)

    def _embed(self, faces):
        return self.net(faces)


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]   # tiny models: one thread (conftest)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    G = Generator(resolution=R, z_dim=32, w_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8}).eval()
    G.compute_latent_avg(500)
    enc = Encoder4Editing(n_styles=G.num_ws, input_size=32, units=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                          style_dim=32, style_hidden=16, stem_channels=8).eval()
    D = Discriminator(resolution=R, channels={4: 16, 8: 16, 16: 8, 32: 8}).eval()
    inv = E4EInverter(enc, G.latent_avg).eval()
    return G.requires_grad_(False), inv.requires_grad_(False), D.requires_grad_(False), TinyRecogniser().eval()


@pytest.fixture(scope="module")
def people(models):
    """6 synthetic 'people' x 3 photos: one z each, small per-photo perturbations."""
    G = models[0]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 1, G.z_dim, generator=g) + 0.15 * torch.randn(6, 3, G.z_dim, generator=g)
    with torch.no_grad():
        x = G(z.reshape(18, G.z_dim)).clamp(-1, 1)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return u8, np.repeat([f"p{i}" for i in range(6)], 3)


def make_mixer(G, plan, **kw):
    torch.manual_seed(3)
    return mx.Mixer(num_ws=G.num_ws, w_dim=G.w_dim, z_dim=G.z_dim, band=list(plan.optimised_layers), emb_dim=128,
                    hidden=32, depth=2, id_net="tiny", **kw)


def codes(G, keys):
    return mx.KeyCodes.cat([mx.key_codes(k, G) for k in keys])


def test_only_the_band_changes_and_alpha_zero_is_the_naive_mix(models):
    G = models[0]
    plan = make_plan(G.num_ws, None, R)
    m = make_mixer(G, plan)
    with torch.no_grad():
        m.carry.fill_(0.3)
    n = 4
    ws_real = G.latent_avg + torch.randn(n, G.num_ws, G.w_dim)
    e = torch.nn.functional.normalize(torch.randn(n, 128), dim=1)
    keys = [Key(bytes([i]) * 32) for i in range(2)]
    kc = codes(G, keys).index(torch.tensor([0, 0, 1, 1]))
    with torch.no_grad():
        ws = m(ws_real, e, kc, G, 1.0)
    assert ws.shape == ws_real.shape
    band = list(plan.optimised_layers)
    other = [i for i in range(G.num_ws) if i not in band]
    assert torch.equal(ws[:, other], ws_real[:, other])
    assert (ws[:, band] - ws_real[:, band]).abs().amax(dim=(1, 2)).min() > 0.1
    # alpha = 0, no carry: exactly the key's code in the band (the naive mix)
    with torch.no_grad():
        m.log_alpha.fill_(-float("inf"))
        m.carry.zero_()
        ws0 = m(ws_real, e, kc, G, key_psi(G))
    naive = torch.cat([mix(ws_real[i:i + 1], key_wplus(keys[i // 2], G), plan)[0] for i in range(n)])
    assert torch.allclose(ws0, naive, atol=1e-6)
    with pytest.raises(AssertionError):
        m(ws_real[:, :3], e, kc, G, 1.0)


def test_key_rotation_is_orthogonal_deterministic_and_key_bound():
    k1, k2 = Key(b"\x01" * 32), Key(b"\x02" * 32)
    r1 = mx.key_rotation(k1, 64)
    assert torch.allclose(r1 @ r1.t(), torch.eye(64), atol=1e-5)
    assert torch.equal(r1, mx.key_rotation(Key(b"\x01" * 32), 64))
    assert (r1 - mx.key_rotation(k2, 64)).abs().max() > 0.1
    assert (r1 - mx.key_rotation(k1, 64, context="other")).abs().max() > 0.1


def test_export_load_round_trip_is_bit_identical(models, tmp_path):
    G = models[0]
    plan = make_plan(G.num_ws, None, R)
    m = make_mixer(G, plan)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = mx.export_mixer(m, tmp_path / "mix.safetensors", dict(steps=1))
    m2 = mx.load_mixer(path)
    assert m2.config() == m.config()
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ws_real = G.latent_avg + torch.randn(3, G.num_ws, G.w_dim)
    e = torch.nn.functional.normalize(torch.randn(3, 128), dim=1)
    kc = codes(G, [Key(b"\x05" * 32)]).index(torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(m.eval()(ws_real, e, kc, G, 1.0), m2(ws_real, e, kc, G, 1.0))
    # a weights file of another kind is refused with the file named
    from faceanonymixer.models.io import save_model
    bad = save_model(torch.nn.Linear(2, 2), tmp_path / "lin.safetensors", dict(arch="e4e"))
    with pytest.raises(CheckpointFormatError, match="lin.safetensors"):
        mx.load_mixer(bad)


def test_protect_batch_with_a_protector(models, people):
    G, inv, _, rec = models
    cfg = ProtectConfig()
    cfg.loss.attr_net = "none"
    prot = Protector(cfg, generator=G, inverter=inv, id_net=rec)
    m = make_mixer(G, prot.plan).eval()
    x = torch.from_numpy(people[0][:3]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    k1, k2 = Key(b"\x07" * 32), Key(b"\x08" * 32)
    img, ws = mx.protect_batch(m, prot, x, k1)
    assert img.shape == x.shape and ws.shape == (3, G.num_ws, G.w_dim) and img.abs().max() <= 1
    alone, _ = mx.protect_batch(m, prot, x[1:2], [k1])            # every image is protected alone
    assert torch.allclose(alone[0], img[1], atol=1e-5)
    img2, _ = mx.protect_batch(m, prot, x, [k2, k2, k1])
    assert (img2[0] - img[0]).abs().max() > 0.05 and torch.allclose(img2[2], img[2], atol=1e-5)
    wrong = make_mixer(G, make_plan(G.num_ws, None, R, [1, 2]))
    if list(prot.plan.optimised_layers) != [1, 2]:
        with pytest.raises(FaceAnonyMixerError, match="identity band"):
            mx.protect_batch(wrong, prot, x, k1)


def trainer(models, data, out, id_net=None, **kw):
    G, inv, D, rec = models
    kw.setdefault("loss", MixerLossConfig(w_attr=0.0 if id_net is None else 0.005))
    cfg = MixerTrainConfig(out=str(out), device="cpu", sample_steps=0, lr=3e-3,
                           mixer=dict(hidden=32, depth=2, alpha=1.0, carry=True), **kw)
    return MixerTrainer(cfg, images=data[0], persons=data[1], generator=G, inverter=inv, id_net=id_net or rec,
                        discriminator=D)


def test_training_steps_lower_the_loss_on_a_batch(models, people, tmp_path):
    t = trainer(models, people, tmp_path / "run", people=3, photos=2, keys=2)
    idx, pid = t.batch()
    kc = t._key_codes(mx.random_keys(2, torch.Generator().manual_seed(5)))
    with torch.no_grad():
        before = float(t.losses(idx, pid, kc)["total"])
    for _ in range(10):
        t.train_step((idx, pid, kc))
    with torch.no_grad():
        after = float(t.losses(idx, pid, kc)["total"])
    assert after < before - 0.05, (before, after)
    stats = t.train_step()                               # a fresh batch runs and reports every term
    assert {"contrast", "same_key", "cross_key", "anon", "embed", "adv", "prior", "alpha"} <= set(stats)
    assert stats["embed"] > 0 and stats["adv"] > 0


def test_one_step_with_sface_and_the_attribute_term(models, people, tmp_path):
    t = trainer(models, people, tmp_path / "run", id_net=get_recogniser("sface"), people=2, photos=2, keys=1)
    stats = t.train_step()
    assert stats["attr"] > 0 and np.isfinite(stats["total"]) and t.M.id_net == "sface"


def test_resume_restores_exactly_and_export(models, people, tmp_path):
    out = tmp_path / "run"
    a = trainer(models, people, out, people=3, photos=2, keys=2)
    for _ in range(2):
        a.train_step()
    a.save_checkpoint()
    for _ in range(2):
        a.train_step()
    b = trainer(models, people, out, people=3, photos=2, keys=2)
    assert b.step == 2
    for _ in range(2):
        b.train_step()
    for (k, va), (_, vb) in zip(a.M.state_dict().items(), b.M.state_dict().items()):
        assert torch.equal(va, vb), k
    b.save_checkpoint()
    m = mx.load_mixer(export_checkpoint(out / "checkpoint.pt", tmp_path / "m.safetensors"))
    for (k, va), (_, vb) in zip(b.M.state_dict().items(), m.state_dict().items()):
        assert torch.equal(va, vb), k


def test_train_config_loads_and_rejects_unknown_keys(tmp_path):
    from pathlib import Path
    cfg = load(MixerTrainConfig, Path(__file__).resolve().parents[1] / "configs" / "train_mixer.yaml")
    assert cfg.loss.w_contrast > 0 and cfg.threads == 1
    with pytest.raises(ConfigError, match="nonsense"):
        load(MixerTrainConfig, None, ["loss.nonsense=1"])
    from faceanonymixer import cli
    args = cli.build_parser().parse_args(["train", "mixer", "--minutes", "1"])
    assert args.what == "mixer"


def test_loss_masks_and_contrast_scope():
    from faceanonymixer.train.mixer_loss import MixerLossConfig, mixer_losses, pair_masks, supcon
    person = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    key = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    m = pair_masks(person, key)
    assert m["pos"].sum() == 8 and m["same_key"].sum() == 16 and m["cross_key"].sum() == 16
    assert not (m["pos"] & m["same_key"]).any() and not m["pos"].diagonal().any()
    # classes placed apart: the loss is low; people of one key on one point: high; scope 'key' ignores other keys
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    good = centres[person * 2 + key]
    bad = torch.nn.functional.normalize(centres[key] + 0.01 * torch.randn(8, 16, generator=g), dim=1)
    scope = key[:, None] == key[None, :]
    assert supcon(good, m["pos"], 0.1, scope) < 0.01 < supcon(bad, m["pos"], 0.1, scope)
    out = mixer_losses(MixerLossConfig(), good, -good, person, key)
    assert out["anon"] == 0 and out["same_key"] >= 0 and torch.isfinite(out["total"])
    with pytest.raises(ValueError, match="contrast_scope"):
        mixer_losses(MixerLossConfig(contrast_scope="nope"), good, good, person, key)


# -- protect.engine: mixer (pipeline.Protector) and the evaluation variant 'mixer' ----------------------------
def test_engine_mixer_in_the_protector_matches_protect_batch(models, people, tmp_path):
    G, inv, _, rec = models
    cfg = ProtectConfig()
    cfg.loss.attr_net = "none"
    base = Protector(cfg, generator=G, inverter=inv, id_net=rec)
    m = make_mixer(G, base.plan).eval()
    with torch.no_grad():
        m.f[-1].weight.normal_(0, 0.2)                               # not the zero start: f matters
    path = mx.export_mixer(m, tmp_path / "mixer.safetensors")
    cfg_m = ProtectConfig(engine="mixer")
    cfg_m.loss.attr_net = "none"
    cfg_m.models.mixer = str(path)
    cfg_m.batch_people = 2
    prot = Protector(cfg_m, generator=G, inverter=inv, id_net=rec)
    x = torch.from_numpy(people[0][:9]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    keys = [Key(bytes([20 + i]) * 32) for i in range(3)]
    br = prot.protect_people([[x[3 * p + j] for j in range(3)] for p in range(3)], keys, names=["a", "b", "c"])
    assert not br.failures and [r.name for r in br.results] == ["a", "b", "c"]
    want, _ = mx.protect_batch(m, base, x, [k for k in keys for _ in range(3)])
    got = torch.cat([r.images for r in br.results])
    assert torch.allclose(got, want, atol=1e-5)                      # batching changes nothing
    assert br.results[1].key_fingerprint == keys[1].fingerprint
    side = prot.sidecar(br.results[0], 0)
    assert side["engine"] == "mixer" and side["models"]["mixer"]["sha256"]
    assert "engine" not in base.sidecar(br.results[0], 0)
    cfg_bad = ProtectConfig(engine="mixer")
    cfg_bad.loss.attr_net = "none"
    cfg_bad.models.mixer = str(tmp_path / "missing.safetensors")
    with pytest.raises(FaceAnonyMixerError, match="missing.safetensors.*train mixer"):
        Protector(cfg_bad, generator=G, inverter=inv, id_net=rec)
    with pytest.raises(ConfigError, match="engine"):
        Protector(ProtectConfig(engine="fast"), generator=G, inverter=inv, id_net=rec)


def test_opt_in_fields_keep_the_config_hash_of_older_configs():
    import dataclasses
    import hashlib
    import json
    from faceanonymixer.config import config_hash
    old = dataclasses.asdict(ProtectConfig())
    del old["engine"], old["mixer_refine_steps"], old["models"]["mixer"]  # the config before the mixer
    del old["models"]["lpips_backbone"], old["refine"]["loss"], old["refine"]["lpips_net"], old["refine"]["size"]
    want = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_hash(ProtectConfig()) == want
    assert config_hash(ProtectConfig(engine="mixer")) != want        # used: it counts
    from faceanonymixer.pipeline import RefineConfig
    assert config_hash(ProtectConfig(refine=RefineConfig(loss="lpips"))) != want


def test_engine_is_a_config_field(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("engine: mixer\nmodels: {mixer: my.safetensors}\n")
    cfg = load(ProtectConfig, p)
    assert cfg.engine == "mixer" and cfg.models.mixer == "my.safetensors"


def test_shipped_mixer_fits_the_shipped_models():
    """`fam-mixer-64` (registry, sha256 pinned) loads into a Protector with the default models and protects an
    aligned face in one pass, deterministically."""
    from faceanonymixer import registry
    try:
        registry.locate("fam-mixer-64")
        registry.locate("sface")
    except FaceAnonyMixerError as e:
        pytest.skip(f"models not installed: {e}")
    cfg = ProtectConfig(engine="mixer")
    cfg.models.id_net = "sface"
    prot = Protector(cfg)
    G = prot.generator
    with torch.no_grad():
        x = prot.synthesise(G.truncate(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))),
                                       0.7)[:, None].repeat(1, G.num_ws, 1))
    key = Key(b"\x05" * 32)
    a = prot.protect_people([[x[0], x[1]]], key).results[0].images
    b = prot.protect_people([[x[0], x[1]]], key).results[0].images
    assert a.shape == x.shape and torch.equal(a, b) and (a - x).abs().mean() > 0.02


def test_mixer_refinement_starts_from_the_mixer_codes(models, people, tmp_path):
    """protect.mixer_refine_steps: the paper's optimisation from the mixer's output, each image alone: with a zero
    learning rate it returns the mixer's codes unchanged (the start is the mixer's, not the naive mix); with
    steps it moves only the band."""
    from dataclasses import replace
    G, inv, _, rec = models
    cfg = ProtectConfig(engine="mixer")
    cfg.loss.attr_net = "none"
    base = Protector(replace(cfg, engine="optimise"), generator=G, inverter=inv, id_net=rec)
    m = make_mixer(G, base.plan).eval()
    with torch.no_grad():
        m.f[-1].weight.normal_(0, 0.2)
    cfg.models.mixer = str(mx.export_mixer(m, tmp_path / "mixer.safetensors"))
    x = torch.from_numpy(people[0][:2]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    keys = [Key(b"\x31" * 32), Key(b"\x32" * 32)]
    plain = Protector(cfg, generator=G, inverter=inv, id_net=rec).protect_people([[x[0]], [x[1]]], keys).results
    still = replace(cfg, mixer_refine_steps=2, optim=replace(cfg.optim, lr=0.0, augment_copies=1))
    r0 = Protector(still, generator=G, inverter=inv, id_net=rec).protect_people([[x[0]], [x[1]]], keys).results
    for a, b in zip(plain, r0):
        assert torch.allclose(a.ws, b.ws, atol=1e-6)
    moved = replace(cfg, mixer_refine_steps=3, optim=replace(cfg.optim, lr=0.05, augment_copies=1))
    r1 = Protector(moved, generator=G, inverter=inv, id_net=rec).protect_people([[x[0]], [x[1]]], keys).results
    band = list(base.plan.optimised_layers)
    rest = [i for i in range(G.num_ws) if i not in band]
    for a, b in zip(plain, r1):
        assert (a.ws[:, band] - b.ws[:, band]).abs().max() > 1e-4
        assert torch.equal(a.ws[:, rest], b.ws[:, rest])


def test_the_official_path_recipe_trains_with_an_nvlabs_generator(fixtures_dir, tmp_path):
    """configs/train_mixer_ffhq1024.yaml (the paper's models, for a GPU) with the generator swapped for the official
    NVlabs pickle fixture (a narrow random 64-px network loaded by file through the restricted unpickler, the same
    path an FFHQ-1024 .pkl takes) and an e4e-layout encoder built for its W+: the recipe's loader, plan, mixer and
    losses run and the loss goes down. No discriminator, as the config says."""
    from pathlib import Path
    from faceanonymixer.models.loading import load_generator
    cfg = load(MixerTrainConfig, Path(__file__).parents[1] / "configs" / "train_mixer_ffhq1024.yaml",
               [f"generator={fixtures_dir / 'nvlabs_g64_narrow.pkl'}", f"out={tmp_path / 'run'}",
                "device=cpu", "people=2", "photos=2", "keys=1", "lr=0.003", "sample_steps=0",
                "mixer={hidden: 32, depth: 2, alpha: 1.0, carry: true}"])
    assert cfg.inverter == "e4e-ffhq" and cfg.discriminator is None and cfg.loss.w_adv == 0
    G = load_generator(cfg.generator).eval()
    assert G.resolution == 64 and G.num_ws == 10
    torch.manual_seed(0)
    enc = Encoder4Editing(n_styles=G.num_ws, input_size=64, units=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                          style_dim=G.w_dim, style_hidden=16, stem_channels=8).eval()
    inv = E4EInverter(enc, G.latent_avg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # 3 'people' x 2 photos from the generator itself (its raw output, clamped)
        z = torch.randn(3, 1, G.z_dim, generator=g) + 0.1 * torch.randn(3, 2, G.z_dim, generator=g)
        x = G(z.reshape(6, G.z_dim)).clamp(-1, 1)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    t = MixerTrainer(cfg, images=u8, persons=np.repeat(["a", "b", "c"], 2), generator=G, inverter=inv,
                     id_net=get_recogniser("sface"))
    assert t.D is None and t.M.band == list(t.plan.optimised_layers) and t.M.id_net == "sface"
    idx, pid = t.batch()
    kc = t._key_codes(mx.random_keys(1, torch.Generator().manual_seed(5)))
    with torch.no_grad():
        before = float(t.losses(idx, pid, kc)["total"])
    for _ in range(4):
        stats = t.train_step((idx, pid, kc))
    with torch.no_grad():
        after = float(t.losses(idx, pid, kc)["total"])
    assert np.isfinite(stats["total"]) and stats["attr"] > 0 and after < before, (before, after)
