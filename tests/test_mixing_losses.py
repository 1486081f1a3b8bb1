"""Layer assignments touch exactly the intended layers; the loss terms on constructed embeddings."""
from __future__ import annotations

import math

import pytest
import torch

from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.fr import get_recogniser
from faceanonymixer.keys import Key, key_wplus
from faceanonymixer.losses import (LossConfig, anchor_loss, anonymity_loss, attribute_loss, get_attribute_encoder,
                                   identity_consistency_loss, separation_loss)
from faceanonymixer.mixing import MixedLatent, MixingConfig, layer_bands, make_plan, mix
from faceanonymixer.models.stylegan2 import Generator
from faceanonymixer.optimize import Group, OptimConfig, optimise

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels


def test_layer_bands_reproduce_paper_and_scale():
    assert layer_bands(18, 1024) == ([0, 1, 2], [3, 4, 5, 6, 7], list(range(8, 18)))
    assert layer_bands(10, 64) == ([0], [1, 2, 3], list(range(4, 10)))
    assert layer_bands(14, 256) == ([0, 1, 2], [3, 4, 5], list(range(6, 14)))
    for L in (8, 10, 12, 14, 16, 18):
        c, i, f = layer_bands(L)
        assert c + i + f == list(range(L)) and c and i and f


def test_plans():
    r = make_plan(18, MixingConfig("readme"))
    assert r.key_layers == r.optimised_layers == (3, 4, 5, 6, 7)
    c = make_plan(18, MixingConfig("code"))
    assert c.key_layers == (0, 1, 2) and c.optimised_layers == (3, 4, 5, 6, 7)
    assert make_plan(10, MixingConfig("code")).key_layers == (0,)
    e = make_plan(10, MixingConfig("readme", identity_layers=[2, 3, 4]))
    assert e.optimised_layers == (2, 3, 4)
    # precedence: config band > the generator's measured band (weights meta) > the scaling rule
    assert make_plan(10, MixingConfig("readme"), generator_band=[1, 2, 3, 4, 5]).key_layers == (1, 2, 3, 4, 5)
    assert make_plan(10, MixingConfig("code"), generator_band=[1, 2, 3, 4, 5]).key_layers == (0,)
    assert make_plan(10, MixingConfig("readme", identity_layers=[2, 3]), generator_band=[1, 2, 3, 4, 5]
                     ).key_layers == (2, 3)
    assert make_plan(10, MixingConfig("readme")).key_layers == (1, 2, 3)
    with pytest.raises(FaceAnonyMixerError, match="within 1..8"):
        make_plan(10, MixingConfig("readme"), generator_band=[0, 1])
    with pytest.raises(FaceAnonyMixerError):
        make_plan(10, MixingConfig("other"))


def test_mixed_latent_gradients_exactly_zero_outside_mask():
    w = torch.randn(3, 10, 8)
    _, mask = mix(w, torch.randn(1, 10, 8), make_plan(10))
    lat = MixedLatent(w, mask)
    ws = lat()
    ws.pow(2).sum().backward()
    assert lat.param.grad is not None and lat.param.shape == (3, 3, 8)
    probe = w.clone().requires_grad_(True)                # the same composition seen from a full tensor
    full = torch.where(mask[None, :, None], probe, probe.detach())
    full.pow(2).sum().backward()
    assert (probe.grad[:, ~mask] == 0).all() and (probe.grad[:, mask] != 0).all()


@pytest.mark.parametrize("assignment", ["readme", "code"])
def test_optimisation_touches_exactly_the_intended_layers(assignment):
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8}).eval()
    G.compute_latent_avg(500)
    plan = make_plan(G.num_ws, MixingConfig(assignment))
    w_real = G.truncate(G.mapping(torch.randn(2, 32)), 0.7)[:, None].repeat(1, G.num_ws, 1).detach()
    w_real = w_real + 0.3 * torch.randn_like(w_real)       # distinct per-layer codes
    x = G.synthesis(w_real).clamp(-1, 1).detach()
    w_key = key_wplus(Key(bytes(32)), G)
    sface = get_recogniser("sface")
    res = optimise(G, sface, None, [Group(x, w_real, w_key)], plan, LossConfig(w_attr=0), OptimConfig(steps=2))
    ws = res.ws[0]
    opt = list(plan.optimised_layers)
    frozen = [i for i in range(G.num_ws) if i not in opt]
    key_frozen = [i for i in plan.key_layers if i not in opt]
    real_frozen = [i for i in frozen if i not in plan.key_layers]
    assert torch.equal(ws[:, real_frozen], w_real[:, real_frozen])
    assert torch.equal(ws[:, key_frozen], w_key.expand(2, -1, -1)[:, key_frozen])
    start = (w_key.expand(2, -1, -1) if assignment == "readme" else w_real)[:, opt]
    assert ((ws[:, opt] - start).abs().amax(-1) > 0).all()    # every optimised layer of every image moved
    assert len(res.history) == 2
    if assignment == "code":
        assert key_frozen == [0] and opt == [1, 2]
    else:
        assert key_frozen == [] and opt == [1, 2]


def test_anonymity_loss_forms():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), dim=1)
    ref = torch.tensor([[1.0, 0.0]] * 3)
    assert torch.allclose(anonymity_loss(e, ref), torch.tensor([1.0, math.sqrt(0.5), 1.0]))
    assert torch.allclose(anonymity_loss(e, ref, form="hinge"), torch.tensor([1.0, math.sqrt(0.5), 0.0]))
    assert torch.allclose(anonymity_loss(e, ref, margin=0.5, form="hinge"), torch.tensor([0.5, math.sqrt(0.5) - 0.5, 0]))
    with pytest.raises(FaceAnonyMixerError):
        anonymity_loss(e, ref, form="square")


def test_identity_consistency_loss():
    e = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    l = identity_consistency_loss(e, groups, 3)
    assert torch.allclose(l, torch.tensor([math.sqrt(2), 0.0, 0.0]), atol=1e-5)
    e.requires_grad_(True)
    identity_consistency_loss(e, groups, 3).sum().backward()
    assert torch.isfinite(e.grad).all()                       # identical members: finite gradient


def test_separation_loss():
    e = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(separation_loss(e, d), torch.tensor([0.5]))
    assert torch.allclose(separation_loss(e, d, margin=0.4), torch.tensor([0.3]))
    assert LossConfig().w_sep == 0.0                            # off by default


def test_attribute_encoder_and_loss():
    attr = get_attribute_encoder("sface-early", get_recogniser("sface"))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    f = attr.features(x)
    assert [t.shape for t in f] == [(2, 128, 14, 14), (2, 256, 14, 14), (2, 512, 14, 14)]
    assert torch.equal(attribute_loss(f, f), torch.zeros(2))
    y = x.clone().requires_grad_(True)
    l = attribute_loss(attr.features(y), [t.detach() for t in attr.features(x.flip(-1))])
    assert (l > 0).all()
    l.sum().backward()
    assert y.grad.abs().sum() > 0
    e, f2 = attr.embed_and_features(x)                         # one pass = the recogniser's embedding too
    assert torch.allclose(e, get_recogniser("sface").embed_ffhq(x), atol=1e-5)
    assert all(torch.allclose(a, b) for a, b in zip(f, f2))
    tokens = [torch.ones(1, 4, 3), torch.zeros(1, 4, 3)]
    assert torch.allclose(attribute_loss([tokens[0]], [tokens[1]]), torch.tensor([4.0]))   # sum of token L1 means
    assert get_attribute_encoder("none") is None
    with pytest.raises(FaceAnonyMixerError, match="unknown attr_net"):   # farl-vit-b16: tests/test_clip_vit.py
        get_attribute_encoder("farl")


def test_anchor_loss_and_its_effect_on_drift():
    mask = torch.tensor([False, True, True, False])
    w0 = torch.zeros(3, 4, 2)
    lat = MixedLatent(w0, mask)
    with torch.no_grad():
        lat.param[0] += 1.0          # member 0 (person 0) drifts by 1 everywhere; member 1 (person 0) stays
        lat.param[2, 0, 0] = 2.0     # member 2 (person 1): one of 4 entries drifts by 2
    l = anchor_loss(lat.param, lat.base[:, lat.idx], torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(l, torch.tensor([0.5, 1.0]))        # per-person mean of per-member mean square
    assert LossConfig().w_anchor == 0.0                        # off by default (the paper has no such term)
    # on a real optimisation the anchor bounds how far the optimised layers move from the key code
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8}).eval()
    G.compute_latent_avg(500)
    plan = make_plan(G.num_ws, MixingConfig("readme"))
    w_real = G.truncate(G.mapping(torch.randn(2, 32)), 0.7)[:, None].repeat(1, G.num_ws, 1).detach()
    x = G.synthesis(w_real).clamp(-1, 1).detach()
    w_key = key_wplus(Key(bytes(32)), G)
    sface = get_recogniser("sface")
    opt = list(plan.optimised_layers)

    def drift(w_anchor):
        res = optimise(G, sface, None, [Group(x, w_real, w_key)], plan,
                       LossConfig(w_attr=0, w_anchor=w_anchor), OptimConfig(steps=8, lr=0.05))
        return (res.ws[0][:, opt] - w_key[:, opt]).pow(2).mean().item(), res.history
    free, _ = drift(0.0)
    held, hist = drift(1000.0)
    assert held < 0.5 * free, (free, held)
    assert "anchor" in hist[0]
