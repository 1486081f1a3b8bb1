"""The ``linkage`` attack of ``faceanonymixer evaluate`` (FaceLinkGen protocol, scaled to a CPU): an attacker who
holds a few hundred (original photo, protected image) pairs of *other* people trains a face recogniser that maps
protected faces back to the original identity, then links test people's protected images to clean photos.

* Attacker data: people disjoint from the test people (default: the 'train' split of the evaluation's folder),
  ``images_per_person`` photos each, protected with the same settings as the test images (a person's photos in
  one joint session, as the evaluation protects them). N pairs = the first N of them (nested sets).
* Key settings: ``fixed`` (one key for every person, attacker and test alike) and ``per_person`` (every person
  has their own key; the test people's keys never occur in training).
* Student: a copy of the recogniser ``student`` (default the teacher itself, faceplugin-fr) with every weight made
  trainable, fine-tuned so that student(protected) matches teacher(original):
  (1 - cos) + w_l1 * L1 + w_triplet * triplet(margin; negatives = the batch targets shifted by one), AdamW, random
  horizontal flips, early stopping on the held-out attacker people.
* Feature variant (``linkage_feature``): ridge regression from teacher(protected) to teacher(original), its
  strength chosen on the held-out people.
* Metric (cross-photo linkage): every test image's protected version is a query against a clean gallery of all
  *other* test images (the person's other photos + everyone else's); Top-k = the true identity among the k best
  identities (identity score = its best gallery image). Reported before the attack (teacher on the protected
  query), after it, the clean ceiling (the original photo as query) and chance (k / identities).
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import fr
from ..errors import FaceAnonyMixerError
from ..models.onnx_graph import OnnxGraphModule
from ..tensors import from_uint8, to_uint8
from . import baselines
from .dataset import Dataset, digest, drop_items, prepare, seeded_rng, select_dataset
from .embeddings import embed_crops, embed_ffhq
from .config import LINKAGE as NAME, LINKAGE_SETTINGS as SETTINGS, KEYED, LinkageConfig, check_linkage as check_config  # noqa: F401 (re-exported)
from .protection import ImageCache, eval_key

log = logging.getLogger(__name__)

FIXED_KEY_NAME = "faceanonymixer-linkage-fixed-key"   # the one key of the 'fixed' setting (seeded like eval keys)


# --- the metric ---------------------------------------------------------------------------------------------
def topk_linkage(query: torch.Tensor, gallery: torch.Tensor, query_person: np.ndarray, gallery_person: np.ndarray,
                 exclude: np.ndarray | None = None, ks=(1, 5)) -> dict:
    """query[Q,D], gallery[G,D] L2-normalised; *_person: identity labels; exclude[Q]: gallery row to leave out for
    each query (its own photo; -1 = none). Identity score = best cosine over its gallery images; Top-k = the true
    identity ranked among the k best (ties count against the query). -> {'top1','top5','chance1','chance5',
    'n_queries','n_identities'}."""
    assert query.dim() == 2 and gallery.dim() == 2 and query.shape[1] == gallery.shape[1]
    qp, gp = np.asarray(query_person), np.asarray(gallery_person)
    ids = np.unique(gp)
    col = np.searchsorted(ids, gp)                                      # gallery row -> identity column
    sim = (query.float() @ gallery.float().T).numpy()                   # [Q,G]
    if exclude is not None:
        ex = np.asarray(exclude)
        rows = np.flatnonzero(ex >= 0)
        sim[rows, ex[rows]] = -np.inf
    ident = np.full((len(qp), len(ids)), -np.inf, dtype=np.float64)
    for c in range(len(ids)):
        ident[:, c] = sim[:, col == c].max(axis=1)
    valid = np.isin(qp, ids)
    true = ident[np.arange(len(qp)), np.searchsorted(ids, qp).clip(0, len(ids) - 1)]
    better = (ident >= true[:, None]).sum(axis=1) - 1                    # other identities scoring >= the true one
    out = {"n_queries": int(valid.sum()), "n_identities": int(len(ids))}
    for k in ks:
        hit = (better < k) & valid & np.isfinite(true)
        out[f"top{k}"] = float(hit[valid].mean()) if valid.any() else None
        out[f"chance{k}"] = min(k, len(ids)) / len(ids) if len(ids) else None
    return out


# --- the student ------------------------------------------------------------------------------------------------
def trainable_copy(rec):
    """A deep copy of recogniser ``rec`` whose weights are trainable parameters (the ONNX executor keeps them as
    frozen buffers; BatchNorm running statistics stay buffers)."""
    if not getattr(rec, "differentiable", False):
        raise FaceAnonyMixerError(f"linkage: the student recogniser '{rec.name}' is not differentiable; "
                                  "choose faceplugin-fr, sface or arcface-ir-se50 as linkage.student")
    st = copy.deepcopy(rec)
    for m in st.modules():
        if isinstance(m, OnnxGraphModule):
            stats = {ins[k] for op, ins, _, _ in m._nodes if op == "BatchNormalization" for k in (3, 4)}
            keep = {m._buf_of[n] for n in stats if n in m._buf_of}
            for name, buf in list(m._buffers.items()):
                if name in keep or buf is None or not buf.is_floating_point():
                    continue
                del m._buffers[name]
                m.register_parameter(name, torch.nn.Parameter(buf.detach().clone()))
    for p in st.parameters():
        p.requires_grad_(True)
    return st


def student_loss(s: torch.Tensor, t: torch.Tensor, lc: LinkageConfig, person: torch.Tensor | None = None):
    """s, t [B,D] L2-normalised (student on protected, teacher on original) -> scalar loss."""
    cos = (1.0 - (s * t).sum(dim=1)).mean()
    l1 = (s - t).abs().mean()
    neg = t.roll(1, dims=0)                                   # the batch targets shifted by one
    d_pos = (s - t).norm(dim=1)
    d_neg = (s - neg).norm(dim=1)
    trip = F.relu(d_pos - d_neg + lc.margin)
    if person is not None:                                    # a negative of the same person is no negative
        trip = trip * (person != person.roll(1, dims=0)).float()
    return cos + lc.w_l1 * l1 + lc.w_triplet * trip.mean()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_student(student_init, x_prot: torch.Tensor, target: torch.Tensor, person: np.ndarray, lc: LinkageConfig,
                  seed: int = 0, device: str = "cpu") -> tuple[object, dict]:
    """Fine-tune a trainable copy of ``student_init`` on attacker pairs: x_prot[N,3,R,R] protected (FFHQ, [-1,1]),
    target[N,D] teacher embeddings of the originals, person[N] attacker identities (held-out split by person).
    -> (student in eval mode, log dict: epochs, best held-out loss, seconds)."""
    t0 = time.time()
    person = np.asarray(person)
    n = len(x_prot)
    assert target.shape[0] == n and person.shape[0] == n
    rng = seeded_rng(seed, "linkage-holdout", n)
    people = np.unique(person)
    n_hold = max(1, int(round(lc.holdout * len(people)))) if len(people) > 1 else 0
    held_people = set(rng.permutation(people)[:n_hold].tolist())
    held = np.array([p in held_people for p in person])
    tr, va = np.flatnonzero(~held), np.flatnonzero(held)
    st = trainable_copy(student_init).to(device)
    opt = torch.optim.AdamW([p for p in st.parameters() if p.requires_grad], lr=lc.lr, weight_decay=lc.weight_decay)
    gen = torch.Generator().manual_seed(int(seeded_rng(seed, "linkage-train", n).integers(0, 2 ** 31)))
    pt = torch.as_tensor(person)
    target = target.to(device)

    def val_loss() -> float:
        if len(va) == 0:
            return float("nan")
        with torch.no_grad():
            s = torch.cat([st.embed_ffhq(x_prot[va[i:i + 64]].to(device)) for i in range(0, len(va), 64)])
            return float(student_loss(s, target[va], lc, pt[va]))

    best = val_loss()
    best_state = {k: v.detach().clone() for k, v in st.state_dict().items()}
    best_epoch, epochs, history = 0, 0, [best]
    for ep in range(1, int(lc.max_epochs) + 1):
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        for s in range(0, len(order), lc.batch_size):
            b = order[s:s + lc.batch_size]
            if len(b) < 2:
                continue
            x = x_prot[b]
            if lc.flip:
                x = _augment(x, gen)
            loss = student_loss(st.embed_ffhq(x.to(device)), target[b], lc, pt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epochs = ep
        v = val_loss()
        history.append(v)
        if len(va) == 0 or v < best:
            best, best_epoch = v, ep
            best_state = {k: t.detach().clone() for k, t in st.state_dict().items()}
        elif ep - best_epoch >= lc.patience:
            break
    st.load_state_dict(best_state)
    for p in st.parameters():
        p.requires_grad_(False)
    st.eval()
    return st, {"epochs": epochs, "best_epoch": best_epoch, "heldout_loss": history, "n_train": int(len(tr)),
                "n_heldout": int(len(va)), "seconds": round(time.time() - t0, 1)}


# --- the feature-space variant ------------------------------------------------------------------------------------
def fit_ridge(x: np.ndarray, y: np.ndarray, held: np.ndarray,
              lambdas=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)):
    """Residual ridge map x[N,D] -> y[N,D]: y ~ x (I + W) + b, ||W||^2 penalised, so a strong penalty falls back
    to the identity (= no attack) instead of to zero. Strength chosen by held-out mean cosine, then refit on all.
    -> (M = I + W, b, lambda)."""
    def fit(xx, yy, lam):
        mx, my = xx.mean(0), yy.mean(0)
        xc, rc = xx - mx, (yy - my) - (xx - mx)
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(xx.shape[1]), xc.T @ rc) + np.eye(xx.shape[1])
        return w, my - mx @ w

    def cos(a, b):
        return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
    best = lambdas[len(lambdas) // 2]
    if held.any() and (~held).sum() >= 2:
        scores = []
        for lam in lambdas:
            w, b = fit(x[~held], y[~held], lam)
            scores.append(cos(x[held] @ w + b, y[held]))
        best = lambdas[int(np.argmax(scores))]
    w, b = fit(x, y, best)
    return w, b, best


# --- protection of attacker and test images ---------------------------------------------------------------------
def protect_sets(variant: str, cfg, method, names: list[str], groups: list[np.ndarray], ffhq: torch.Tensor,
                 keys: list, cache: ImageCache, tag: str, items: list[str] | None = None) -> torch.Tensor:
    """Protect ``ffhq`` (FFHQ crops [n,3,R,R]) group by group (a group = one person's photos, one key, one joint
    session; cfg.sessions 'separate' = each photo alone) with the evaluation's settings for ``variant``; cached per
    (person, tag) and checked against the photos' names ``items`` (default: their indices). Key-less variants
    apply their transform."""
    items = items if items is not None else [str(i) for i in range(len(ffhq))]
    out = torch.empty_like(ffhq)
    if variant not in KEYED:
        if variant == "reconstruction":
            y = torch.cat([method.reconstruct(ffhq[s:s + 32]) for s in range(0, len(ffhq), 32)])
        elif variant == "lowres":
            y = ffhq.clone()
        elif variant == "blur":
            y = baselines.blur(ffhq, cfg.blur_sigma)
        elif variant == "pixelate":
            y = baselines.pixelate(ffhq, cfg.pixelate_block)
        else:
            raise FaceAnonyMixerError(f"linkage: variant '{variant}' is not supported")
        return from_uint8(to_uint8(y))
    jobs = []
    for name, idx, key in zip(names, groups, keys):
        parts = [idx] if cfg.sessions == "joint" else [idx[j:j + 1] for j in range(len(idx))]
        for j, part in enumerate(parts):
            jobs.append((f"{name}", part, key, tag if len(parts) == 1 else f"{tag}.s{j}"))
    todo = []
    for name, part, key, t in jobs:
        got = cache.get(name, t, [items[i] for i in part.tolist()])
        if got is not None:
            out[part] = from_uint8(got)
        else:
            todo.append((name, part, key, t))
    bs = max(1, cfg.people_per_batch)
    for s in tqdm(range(0, len(todo), bs), desc=f"linkage protect {variant} {tag}", unit="batch", file=sys.stderr):
        chunk = todo[s:s + bs]
        ys = method.protect(variant, [ffhq[part] for _, part, _, _ in chunk], [k for _, _, k, _ in chunk])
        for (name, part, _, t), y in zip(chunk, ys):
            u8 = to_uint8(y)
            cache.put(name, t, [items[i] for i in part.tolist()], u8)
            out[part] = from_uint8(u8)
    return out


@dataclass
class AttackerSet:
    ds: Dataset                   # attacker people and photos
    arc: np.ndarray               # [n,112,112,3] uint8 ArcFace crops of the originals
    ffhq: torch.Tensor            # [n,3,R,R] FFHQ crops in [-1,1]


def attacker_set(cfg, lc: LinkageConfig, test_people: list[str], resolution: int, cache_root: Path) -> AttackerSet:
    """The attacker's people (disjoint from ``test_people``) and photos, max(n_pairs) pairs at most, aligned."""
    root = lc.data or cfg.data
    n_max = max(int(n) for n in lc.n_pairs)
    ipp = lc.images_per_person
    want = math.ceil(n_max / ipp)
    # draw a few more people than needed: some photos have no detectable face, and test people are excluded
    ds = select_dataset(root, want + max(8, want // 10) + len(test_people), ipp, ipp, cfg.seed + 7919,
                        split=lc.split)
    test = set(test_people)
    keep_people = [p for p in ds.people if p not in test][:want + max(8, want // 10)]
    keep = [ds.people[po] in set(keep_people) for po in ds.person_of.tolist()]
    ds, idx = drop_items(ds, keep, ipp)
    arc, ffhq_u8, ok, _ = prepare(ds, resolution, cache_root)
    ds, idx = drop_items(ds, ok, ipp)
    arc, ffhq_u8 = arc[idx], ffhq_u8[idx]
    # exactly the first n_max pairs (whole people first)
    n_people = min(len(ds.people), want)
    take = np.flatnonzero(ds.person_of < n_people)[:n_max]
    ds, idx = drop_items(ds, np.isin(np.arange(len(ds.items)), take).tolist(), 1)
    if len(ds.items) < min(int(n) for n in lc.n_pairs):
        raise FaceAnonyMixerError(f"linkage: only {len(ds.items)} attacker photos in {root} (split {lc.split}); "
                                  f"need {min(lc.n_pairs)}: lower linkage.n_pairs or point linkage.data elsewhere")
    return AttackerSet(ds=ds, arc=arc[idx], ffhq=from_uint8(ffhq_u8[idx]))


# --- the attack on one variant ------------------------------------------------------------------------------------
def attack_variant(e_query: torch.Tensor, e_clean: torch.Tensor, person_of: np.ndarray, x_test: torch.Tensor,
                   x_att: torch.Tensor, e_att_orig: torch.Tensor, att_person: np.ndarray, teacher, student_init,
                   lc: LinkageConfig, n: int, seed: int = 0, device: str = "cpu") -> tuple[dict, dict, dict]:
    """One (variant, setting, N): e_query = teacher(protected test) [Q,D]; e_clean = teacher(clean test photos);
    x_test / x_att protected test / attacker images; e_att_orig teacher(attacker originals).
    -> (linkage entry, linkage_feature entry, training log)."""
    q = len(person_of)
    excl = np.arange(q)
    clean = topk_linkage(e_clean, e_clean, person_of, person_of, excl)
    before = topk_linkage(e_query, e_clean, person_of, person_of, excl)
    x_tr, t_tr, p_tr = x_att[:n], e_att_orig[:n], att_person[:n]
    st, tlog = train_student(student_init, x_tr, t_tr, p_tr, lc, seed=seed, device=device)
    e_after = embed_ffhq(st, x_test)
    after = topk_linkage(e_after, e_clean, person_of, person_of, excl)
    base = {"top1_before": before["top1"], "top5_before": before["top5"], "top1_clean": clean["top1"],
            "top5_clean": clean["top5"], "chance": before["chance1"], "chance5": before["chance5"],
            "n_train_pairs": int(len(x_tr)), "n_queries": before["n_queries"],
            "n_gallery_identities": before["n_identities"]}
    link = {**base, "top1_after": after["top1"], "top5_after": after["top5"], "epochs": tlog["epochs"],
            "best_epoch": tlog["best_epoch"], "train_seconds": tlog["seconds"]}
    feat = dict(base)
    if lc.feature:
        e_att_prot = embed_ffhq(teacher, x_tr).numpy()
        rng = seeded_rng(seed, "linkage-holdout", len(x_tr))
        people = np.unique(p_tr)
        hold = set(rng.permutation(people)[:max(1, int(round(lc.holdout * len(people))))].tolist())
        w, b, lam = fit_ridge(e_att_prot, t_tr.numpy(), np.array([p in hold for p in p_tr]))
        e_feat = F.normalize(torch.from_numpy(e_query.numpy() @ w + b).float(), dim=1)
        fa = topk_linkage(e_feat, e_clean, person_of, person_of, excl)
        feat.update({"top1_after": fa["top1"], "top5_after": fa["top5"], "ridge_lambda": lam})
    return link, feat, tlog


def run(cfg, ds: Dataset, arc: np.ndarray, ffhq: torch.Tensor, prot: dict, method, cache_root: Path,
        variant_hashes: dict[str, str]) -> dict:
    """The linkage attack on every selected variant and setting. prot[v]['k1'] = the evaluation's protected test
    images (per-person keys). -> {variant: {'linkage': {setting: {N: entry}}, 'linkage_feature': {...}},
    '_info': {...}}."""
    lc: LinkageConfig = cfg.linkage
    t0 = time.time()
    variants = [v for v in (lc.variants or list(prot)) if v in prot]
    teacher = fr.get_recogniser(lc.teacher, device=cfg.device)
    student_init = fr.get_recogniser(lc.student, device=cfg.device)
    res = int(ffhq.shape[-1])
    att = attacker_set(cfg, lc, ds.people, res, cache_root)
    att_person = att.ds.person_of
    e_clean = embed_crops(teacher, arc)
    e_att_orig = embed_crops(teacher, att.arc)
    test_groups = [np.flatnonzero(ds.person_of == p) for p in range(len(ds.people))]
    att_groups = [np.flatnonzero(att_person == p) for p in range(len(att.ds.people))]
    ns = sorted({min(int(n), len(att.ds.items)) for n in lc.n_pairs})
    out: dict = {"_info": {"attacker_root": str(lc.data or cfg.data), "attacker_split": lc.split,
                           "attacker_people": len(att.ds.people), "attacker_pairs": len(att.ds.items),
                           "n_pairs": ns, "teacher": lc.teacher, "student": lc.student, "lr": lc.lr,
                           "test_people": len(ds.people), "test_images": len(ds.items), "training": {}}}
    fixed_key = eval_key(cfg.seed, FIXED_KEY_NAME, "k1")
    for v in variants:
        cache = ImageCache(cache_root / f"linkage_{v}_{variant_hashes.get(v, 'x')}_"
                           f"{digest({'att': str(Path(lc.data or cfg.data).resolve()), 'split': lc.split})[:8]}")
        out[v] = {"linkage": {}, "linkage_feature": {}}
        for setting in lc.settings:
            if v not in KEYED and out[v]["linkage"]:   # key-less: both settings are the same images
                first = next(iter(out[v]["linkage"]))
                out[v]["linkage"][setting] = out[v]["linkage"][first]
                out[v]["linkage_feature"][setting] = out[v]["linkage_feature"][first]
                continue
            if setting == "fixed" and v in KEYED:
                x_test = protect_sets(v, cfg, method, ds.people, test_groups, ffhq, [fixed_key] * len(ds.people),
                                      cache, "fixed", ds.items)
            else:
                x_test = prot[v]["k1"]
            if v in KEYED:
                keys = ([fixed_key] * len(att.ds.people) if setting == "fixed" else
                        [eval_key(cfg.seed, f"linkage-attacker|{p}", "k1") for p in att.ds.people])
                x_att = protect_sets(v, cfg, method, att.ds.people, att_groups, att.ffhq, keys, cache,
                                     f"att_{setting}", att.ds.items)
            else:
                x_att = protect_sets(v, cfg, method, att.ds.people, att_groups, att.ffhq, [None] * len(att_groups),
                                     cache, "att")
            e_query = embed_ffhq(teacher, x_test)
            out[v]["linkage"][setting], out[v]["linkage_feature"][setting] = {}, {}
            for n in ns:
                link, feat, tlog = attack_variant(e_query, e_clean, ds.person_of, x_test, x_att, e_att_orig,
                                                  att_person, teacher, student_init, lc, n, seed=cfg.seed,
                                                  device=cfg.device)
                out[v]["linkage"][setting][str(n)] = link
                out[v]["linkage_feature"][setting][str(n)] = feat
                out["_info"]["training"][f"{v}/{setting}/{n}"] = tlog
                log.info("linkage %s %s N=%d: top1 before %.3f after %.3f (feature %.3f), clean %.3f, chance %.3f",
                         v, setting, n, link["top1_before"], link["top1_after"], feat.get("top1_after") or 0.0,
                         link["top1_clean"], link["chance"])
    out["_info"]["seconds"] = round(time.time() - t0, 1)
    return out
