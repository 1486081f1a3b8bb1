"""eval/linkage.py: the Top-k metric on a hand-made case, the learned linkage attack on an unprotected variant
(reaches the clean ceiling) and on pure-noise "protected" images (stays near chance), on real LFW photos."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceanonymixer import fr
from faceanonymixer.eval import evaluate as ev
from faceanonymixer.eval import linkage as lk
from faceanonymixer.eval.dataset import drop_items, prepare, select_dataset
from faceanonymixer.eval.embeddings import embed_crops, embed_ffhq
from faceanonymixer.tensors import from_uint8

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eval.yaml"


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_topk_hand_made_case():
    # gallery: A0 A1 B0 B1 C0 C1 (2-D directions); queries are the six photos themselves, own photo excluded
    g = _unit([1, 0], [0.9, 0.1], [0, 1], [0.6, 0.8], [-1, 0], [-0.9, -0.3])
    gp = np.array([0, 0, 1, 1, 2, 2])
    q = _unit([1, 0], [0.9, 0.1], [0, 1], [0.95, 0.3], [-1, 0], [-0.9, -0.3])   # B1's query looks like A
    r = lk.topk_linkage(q, g, gp, gp, exclude=np.arange(6), ks=(1, 2))
    # A0 -> A1 (hit), A1 -> A0 (hit), B0 -> B1 (hit), B1' -> A first, B0 second (miss@1, hit@2), C0, C1 hit
    assert r["top1"] == pytest.approx(5 / 6)
    assert r["top2"] == pytest.approx(1.0)
    assert r["chance1"] == pytest.approx(1 / 3) and r["chance2"] == pytest.approx(2 / 3)
    assert r["n_queries"] == 6 and r["n_identities"] == 3
    # without excluding its own photo every query finds itself: the exclusion is what makes it cross-photo
    assert lk.topk_linkage(g, g, gp, gp, exclude=None)["top1"] == 1.0
    # own photo excluded: the person's other photo is far away, another person's is closer -> miss; kept -> hit
    q1 = _unit([0, 1])
    g1 = _unit([0, 1], [1, 0], [0.6, 0.8])
    p1 = np.array([0, 0, 1])
    assert lk.topk_linkage(q1, g1, np.array([0]), p1, exclude=np.array([0]), ks=(1,))["top1"] == 0.0
    assert lk.topk_linkage(q1, g1, np.array([0]), p1, exclude=np.array([-1]), ks=(1,))["top1"] == 1.0


def test_a_student_of_another_embedding_size_than_the_teacher_is_refused_at_load():
    from faceanonymixer.config import ConfigError
    with pytest.raises(ConfigError, match=r"linkage.student 'sface' embeds in 128 .*teacher 'faceplugin-fr' in 512"
                                          r".*--set linkage.teacher=sface"):
        ev.load_config(CONFIG, ["linkage.student=sface"])
    with pytest.raises(ConfigError, match=r"linkage.student 'dlib-resnet' is not differentiable"):
        ev.load_config(CONFIG, ["linkage.student=dlib-resnet", "linkage.teacher=dlib-resnet"])
    cfg = ev.load_config(CONFIG, ["linkage.student=sface", "linkage.teacher=sface"])   # the white-box variant
    assert (cfg.linkage.student, cfg.linkage.teacher) == ("sface", "sface")


def test_residual_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    m = np.eye(8) + 0.3 * rng.standard_normal((8, 8))
    x = rng.standard_normal((200, 8))
    y = x @ m + 0.5
    held = np.arange(200) % 5 == 0
    w, b, lam = lk.fit_ridge(x, y, held)
    assert np.abs(x @ w + b - y).max() < 0.05
    assert lam <= 1.0


def test_student_loss_and_trainable_copy_leave_the_teacher_alone():
    rec = fr.get_recogniser("faceplugin-fr")
    st = lk.trainable_copy(rec)
    assert sum(p.numel() for p in st.parameters() if p.requires_grad) > 1_000_000
    assert not any(p.requires_grad for p in rec.parameters())
    t = F.normalize(torch.randn(4, 512), dim=1)
    cfg = lk.LinkageConfig()
    # student == teacher: only the triplet term is left, relu(margin - |s - t_shifted|)
    want = cfg.w_triplet * F.relu(cfg.margin - (t - t.roll(1, 0)).norm(dim=1)).mean()
    assert float(lk.student_loss(t, t, cfg)) == pytest.approx(float(want), abs=1e-5)
    assert float(lk.student_loss(t.roll(2, 0), t, cfg)) > float(want) + 1.0
    # same-person negatives are masked out
    assert float(lk.student_loss(t, t, cfg, torch.tensor([0, 0, 0, 0]))) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def lfw_small(lfw_dir):
    """12 'val' test people (3 photos each) and the evaluation config with a small attacker set (train split)."""
    over = [f'data="{lfw_dir / "images"}"', "linkage.n_pairs=[32]", "linkage.max_epochs=2", "linkage.patience=2",
            "linkage.settings=[fixed,per_person]", "threads=1"]
    cfg = ev.load_config(CONFIG, over)
    ds = select_dataset(cfg.data, 12, 3, 3, 0, split="val")
    cache = Path(__import__("tempfile").mkdtemp(prefix="linkage_test_"))
    arc, ff, ok, _ = prepare(ds, 64, cache)
    ds, idx = drop_items(ds, ok, 2)
    return cfg, ds, arc[idx], from_uint8(ff[idx]), cache


@pytest.mark.slow   # ~35 s on an idle core (fine-tuning a 1.2M-parameter recogniser), ~70 s on a busy one
def test_linkage_on_unprotected_variant_reaches_the_clean_ceiling(lfw_small):
    cfg, ds, arc, ffhq, cache = lfw_small
    out = lk.run(cfg, ds, arc, ffhq, {"lowres": {"k1": ffhq}}, None, cache, {"lowres": "t"})
    info = out["_info"]
    assert info["attacker_pairs"] == 32 and info["test_people"] == len(ds.people)
    r = out["lowres"]["linkage"]["per_person"]["32"]
    assert r["n_queries"] == len(ds.items) and r["n_gallery_identities"] == len(ds.people)
    assert r["top1_clean"] >= 0.8
    assert r["top1_after"] >= r["top1_clean"] - 0.05, r
    assert out["lowres"]["linkage"]["fixed"]["32"] == r        # key-less: both settings are the same images
    f = out["lowres"]["linkage_feature"]["per_person"]["32"]
    assert f["top1_after"] >= r["top1_clean"] - 0.15, f


@pytest.mark.slow   # ~30 s on an idle core
def test_linkage_on_pure_noise_stays_near_chance(lfw_small):
    cfg, ds, arc, ffhq, cache = lfw_small
    teacher = fr.get_recogniser("faceplugin-fr")
    att = lk.attacker_set(cfg, cfg.linkage, ds.people, 64, cache)
    assert not set(att.ds.people) & set(ds.people)
    g = torch.Generator().manual_seed(0)
    x_test = torch.rand(ffhq.shape, generator=g) * 2 - 1
    x_att = torch.rand(att.ffhq.shape, generator=g) * 2 - 1
    before_teacher = embed_ffhq(teacher, ffhq[:4])
    link, feat, log = lk.attack_variant(embed_ffhq(teacher, x_test), embed_crops(teacher, arc), ds.person_of, x_test,
                                        x_att, embed_crops(teacher, att.arc), att.ds.person_of, teacher, teacher,
                                        cfg.linkage, 32)
    assert link["chance"] == pytest.approx(1 / len(ds.people))
    assert link["top1_after"] <= link["chance"] + 0.12, link
    assert feat["top1_after"] <= feat["chance"] + 0.12, feat
    assert link["top1_clean"] >= 0.8
    assert torch.allclose(embed_ffhq(teacher, ffhq[:4]), before_teacher)   # training never touched the teacher


@pytest.mark.slow   # ~40 s: the whole `evaluate` with the linkage attack and soft biometrics on key-less variants
def test_evaluate_reports_linkage(lfw_dir, tmp_path):
    import json
    over = [f'data="{lfw_dir / "images"}"', f'out="{tmp_path / "rep"}"', "max_people=6", "images_per_person=2",
            "variants=[lowres,blur]", "main_variant=lowres", "recognisers=[faceplugin-fr]",
            "attacks.names=[linkage]", "linkage.n_pairs=[8]", "linkage.max_epochs=1", "linkage.settings=[per_person]",
            "n_impostor=100", "grid_people=1", "threads=1"]
    m = ev.evaluate(ev.load_config(CONFIG, over))
    r = m["recognisers"]["faceplugin-fr"]["irreversibility"]["linkage"]["per_person"]["8"]
    for k in ("top1_before", "top1_after", "top5_after", "top1_clean", "chance", "n_train_pairs", "n_queries"):
        assert k in r, k
    assert r["n_train_pairs"] == 8 and r["n_queries"] == 12 and r["chance"] == pytest.approx(1 / 6)
    assert "top1_after" in m["variants"]["blur"]["faceplugin-fr"]["irreversibility"]["linkage_feature"]["per_person"]["8"]
    assert set(m["soft_biometrics"]["variants"]) == {"blur"}
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["linkage"]["info"]["attacker_pairs"] == 8
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "9. Linkage attack" in md and "10. Soft-biometric leakage" in md and "plots/linkage.png" in md
    assert (tmp_path / "rep" / "plots" / "linkage.png").is_file()
