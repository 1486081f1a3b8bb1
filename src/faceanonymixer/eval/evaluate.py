"""``faceanonymixer evaluate``: protect a data set, score it with several recognisers, write the report.

Flow: select people and images (deterministic, seed) -> detect + align every image once (ArcFace-112 crop for the
unprotected baseline, FFHQ crop at the generator resolution for the method) -> protect every image under the
person's key k1 and a second key k2, and the stolen-key images (impostor t under victim s's key) for each variant
-> embed with every recogniser -> score every pair kind (eval/report.py lists them) -> attacks -> metrics ->
report. Protected images are cached under ``cache_dir/<variant hash>/`` (hash of everything that determines them),
so a re-run resumes and a changed config recomputes. Keys are derived from the seed and the person's name (they
are evaluation keys, never written anywhere).

This module holds the command and the orchestration; the configuration lives in config.py, the steps in dataset.py (data,
pairs, alignment), protection.py (variants, keys, cache), embeddings.py and scoring.py (pair scores, quality,
attributes), attacks.py and report.py (metrics and report files).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import config as cfgmod
from .. import fr
from ..errors import FaceAnonyMixerError
from ..pipeline import module_digest
from ..tensors import from_uint8, to_uint8
from . import group_scores, report
from . import groups as groupmod
from . import linkage as linkmod
from . import soft_biometrics
from .attacks import ATTACKS, protected_layers, run_attack
from .config import ALL_ATTACKS, KEYED, KEYLESS, EvalConfig, load_config, selected_attacks  # noqa: F401 (re-exported)
from .dataset import data_root, drop_items, make_pairs, prepare, read_pairs_file, select_dataset
from .embeddings import embed_crops, embed_ffhq
from .metrics import frechet_distance
from .protection import ImageCache, Method, eval_key, protect_variant, variant_hash
from .scoring import attribute_preservation, cosines, fid_status, score_original, score_variant

log = logging.getLogger(__name__)


def evaluate(cfg: EvalConfig, command: str = "", models: dict | None = None) -> dict:
    """Run the whole evaluation; returns the metrics dict (also written to <out>/metrics.json).
    ``models``: optional in-memory networks for the Protector (generator=, inverter=, id_net=, attr_net=), e.g. a
    freshly trained generator not yet saved; by default everything is loaded from ``cfg.protect.models``."""
    if not cfg.data:
        cfg = replace(cfg, data=data_root(None))
    t0 = time.time()
    timings: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.time()
        timings[name] = timings.get(name, 0.0) + now - mark[0]
        mark[0] = now
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    cache_root.mkdir(parents=True, exist_ok=True)
    chash = cfgmod.config_hash(cfg)
    needs_method = any(v in KEYED or v == "reconstruction" for v in cfg.variants)
    method = Method(cfg, models) if needs_method else None
    res = method.resolution() if method is not None else 64

    # data, pairs
    explicit = None
    if cfg.pairs:
        only, plist = read_pairs_file(cfg.pairs, cfg.data)
        ds = select_dataset(cfg.data, 0, 1, 0, cfg.seed, only=only)
        explicit = plist
    else:
        ds = select_dataset(cfg.data, cfg.max_people, cfg.min_images, cfg.images_per_person, cfg.seed,
                            split=cfg.split)
    arc, ffhq_u8, ok, dropped = prepare(ds, res, cache_root)
    group_tables, labels, groupings = {}, None, []
    if cfg.groups:   # labels of the selected images; face found per group before images without a face go
        labels = groupmod.load_labels(cfg.groups, ds.items)
        groupings = list(cfg.groupings or labels.groupings)
        missing = [g for g in groupings if g not in labels.groupings]
        if missing:
            raise FaceAnonyMixerError(f"groupings {missing} are not in {labels.source} (it has {labels.groupings})")
        group_tables = group_scores.face_found(labels, groupings, ds.items, ok)
    ds, idx = drop_items(ds, ok, 1 if cfg.pairs else cfg.min_images)
    arc, ffhq_u8 = arc[idx], ffhq_u8[idx]
    if explicit is not None:
        pos = {it: k for k, it in enumerate(ds.items)}
        keep = [(pos[a], pos[b], s) for a, b, s in explicit if a in pos and b in pos]
        gen = np.array([(min(a, b), max(a, b)) for a, b, s in keep if s], dtype=np.int64)
        imp = np.array([(a, b) for a, b, s in keep if not s], dtype=np.int64)
        pairs = make_pairs(ds, cfg.n_impostor, cfg.stolen_images, cfg.seed, genuine=gen, impostor=imp)
    else:
        pairs = make_pairs(ds, cfg.n_impostor, cfg.stolen_images, cfg.seed)
    if len(pairs.genuine) == 0 or len(pairs.impostor) == 0:
        raise FaceAnonyMixerError(f"{cfg.data}: need at least two people with {cfg.min_images}+ usable images "
                                  f"(got {len(ds.people)} people, {len(ds.items)} images)")
    ffhq = from_uint8(ffhq_u8)
    log.info("evaluate: %d people, %d images (%d dropped: no face), %d genuine / %d impostor / %d stolen-key pairs",
             len(ds.people), len(ds.items), len(dropped), len(pairs.genuine), len(pairs.impostor), len(pairs.stolen))

    lap("prepare")
    # protect
    prot: dict[str, dict[str, torch.Tensor]] = {}
    digests = {}
    if models:
        digests = {k: module_digest(m) for k, m in models.items() if isinstance(m, torch.nn.Module)}
    for v in cfg.variants:
        vh = variant_hash(cfg, v, res, digests if (v in KEYED or v == "reconstruction") else None)
        prot[v] = protect_variant(v, cfg, ds, pairs, ffhq, method, ImageCache(cache_root / f"{v}_{vh}"))

    lap("protect")
    # recognisers
    recs = {}
    for name in cfg.recognisers:
        try:
            recs[name] = fr.get_recogniser(name, device=cfg.device)
        except FaceAnonyMixerError as e:
            log.warning("recogniser %s unavailable, skipped: %s", name, e)
    if not recs:
        raise FaceAnonyMixerError("no recogniser could be loaded; run `faceanonymixer weights` to see what is missing")
    # white-box = the network inside the method's losses (and the attacker's network); without the method, any
    # recogniser that the method could use as its loss network
    loss_net = getattr(method.protector().id_net, "name", None) if method is not None else None
    attack_net = (loss_net or "sface") if cfg.attack_recogniser == "auto" else cfg.attack_recogniser
    if loss_net is not None:
        white_box = [n for n in recs if n in (loss_net, attack_net)]
    else:
        white_box = [n for n, r in recs.items() if getattr(r, "white_box", False)]

    scores = report.ScoreSet()
    emb: dict = {}
    bar = tqdm(total=len(recs) * (1 + len(cfg.variants)), desc="embed+score", unit="set", file=sys.stderr)
    for name, rec in recs.items():
        bar.set_postfix_str(f"{name} original")
        e_orig = embed_crops(rec, arc)
        score_original(scores, name, ds, pairs, e_orig)
        emb[(name, report.ORIGINAL)] = e_orig
        bar.update()
        for v in cfg.variants:
            bar.set_postfix_str(f"{name} {v}")
            bar.update()
            e1 = embed_ffhq(rec, prot[v]["k1"])
            e2 = e1 if v in KEYLESS else embed_ffhq(rec, prot[v]["k2"])
            es = e1 if v in KEYLESS else embed_ffhq(rec, prot[v]["stolen"])
            emb[(name, v)] = e1
            if v == cfg.main_variant:
                emb[(name, "stolen")] = es
            score_variant(scores, v, name, ds, pairs, e_orig, e1, e2, es, prot[v]["stolen_row"])
    bar.close()

    group_thr = {}
    if labels is not None:   # the independent recognisers only: the loss network's verdict proves nothing
        for name in recs:
            if name not in white_box:
                group_thr[name] = group_scores.identity_measures(
                    labels, groupings, ds, pairs, name, emb[(name, report.ORIGINAL)], emb[(name, cfg.main_variant)],
                    emb[(name, "stolen")], prot[cfg.main_variant]["stolen_row"], cfg.operating_fmr, group_tables)
    lap("embed_score")
    # attacks on the main variant
    attack_names = [a for a in selected_attacks(cfg) if a in ATTACKS] if cfg.main_variant in KEYED else []
    attack_imgs = {}
    for a in attack_names:
        plan = method.plan(cfg.main_variant)
        layers = protected_layers(plan)
        w_key = None
        wb = None
        if a == "optimise":
            w_key = torch.cat([method.key_code(cfg.main_variant, eval_key(cfg.seed, ds.people[p], "k1"))
                               for p in ds.person_of.tolist()])
            wb = fr.get_recogniser(attack_net, device=cfg.device)
        dev = method.generator.latent_avg.device
        x = prot[cfg.main_variant]["k1"].to(dev)
        imgs = []
        bs = max(1, cfg.attacks.batch_size)
        for s in tqdm(range(0, len(x), bs), desc=f"attack {a}", file=sys.stderr):
            imgs.append(run_attack(a, x[s:s + bs], method.generator, method.inverter, layers,
                                   w_key=None if w_key is None else w_key[s:s + bs].to(dev), recogniser=wb,
                                   cfg=cfg.attacks).detach().cpu())
        attack_imgs[a] = torch.cat(imgs)
        for name, rec in recs.items():
            ea = embed_ffhq(rec, attack_imgs[a])
            n = len(ds.items)
            scores.add(cfg.main_variant, f"attack:{a}", name, [f"original:{it}" for it in ds.items],
                       [f"attack:{a}:{cfg.main_variant}:k1:{it}" for it in ds.items],
                       cosines(emb[(name, report.ORIGINAL)], ea, range(n), range(n)))

    lap("attacks")
    # the learned linkage attack (FaceLinkGen protocol) on every selected variant
    linkage_res = None
    if linkmod.NAME in selected_attacks(cfg):
        hashes = {v: variant_hash(cfg, v, res, digests if (v in KEYED or v == "reconstruction") else None)
                  for v in cfg.variants}
        linkage_res = linkmod.run(cfg, ds, arc, ffhq, prot, method, cache_root, hashes)
    lap("linkage")
    # quality (offline proxy: Fréchet distance in independent recognisers' embedding spaces) and attributes
    quality = fid_status(cfg)
    for name in recs:
        if name in white_box:
            continue
        ref = embed_ffhq(recs[name], ffhq).numpy()
        for v in cfg.variants:
            if v == "lowres":
                continue
            quality[f"frechet_embedding_distance[{name}]"] = quality.get(f"frechet_embedding_distance[{name}]", {})
            quality[f"frechet_embedding_distance[{name}]"][v] = frechet_distance(ref, emb[(name, v)].numpy(), upcast=False)
    quality["note"] = ("frechet_embedding_distance[R] = Fréchet distance between Gaussians fitted to recogniser R's "
                       "embeddings of the real FFHQ crops and of the variant's images; an offline realism proxy, NOT FID")
    attributes = {}
    for v in cfg.variants:
        if v == "lowres":
            continue
        attributes[v] = attribute_preservation(ffhq_u8, prot[v]["k1"])

    soft = None
    if cfg.soft_biometrics:
        try:
            from ..fr.attributes import SoftBiometrics
            soft = soft_biometrics.leakage(SoftBiometrics(), ffhq,
                                           {v: prot[v]["k1"] for v in cfg.variants if v != "lowres"}, ds.person_of)
        except FaceAnonyMixerError as e:
            log.warning("soft-biometric leakage skipped: %s", e)

    lap("quality_attributes")
    counts = {"people": len(ds.people), "images": len(ds.items), "dropped_no_face": len(dropped),
              "genuine": int(len(pairs.genuine)), "impostor": int(len(pairs.impostor)),
              "mated": int(len(pairs.genuine)), "nonmated": int(len(pairs.impostor)),
              "orig_prot_same": len(ds.items), "orig_prot_other": int(2 * len(pairs.genuine)),
              "stolen_key": int(len(pairs.stolen))}
    variants = [report.ORIGINAL] + list(cfg.variants)
    metrics = report.summarise(scores, list(recs), white_box, variants, cfg.main_variant, cfg.operating_fmr,
                               attack_names, extra={"quality": quality, "attributes": attributes},
                               config_hash=chash, seed=cfg.seed, counts=counts)
    if linkage_res is not None:
        report.add_linkage(metrics, linkage_res, cfg.linkage.teacher)
    if soft is not None:
        metrics["soft_biometrics"] = soft
    metrics["data"] = {"root": str(cfg.data), "pairs": cfg.pairs, "dropped": dropped}
    metrics["sessions"] = cfg.sessions
    metrics["loss_network"], metrics["attack_network"] = loss_net, attack_net if attack_names else None
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    if method is not None:
        metrics["mixing"] = {v: method.plan(v).describe() for v in cfg.variants if v in KEYED}
    group_md = group_html = ""
    if labels is not None:
        metrics["groups"] = group_tables                        # groups.<grouping>.<group>.<measure>
        metrics["groups_info"], group_md, group_html = group_scores.finish(group_tables, labels, cfg.main_variant,
                                                                           group_thr, out)
    metrics["seconds"] = round(time.time() - t0, 1)

    # grid: original (two images) | key 1 (same two images) | key 2
    grid_rows = []
    main = prot[cfg.main_variant]
    for p in range(min(cfg.grid_people, len(ds.people))):
        its = np.flatnonzero(ds.person_of == p)[:2]
        cells = [ffhq_u8[i] for i in its] + [to_uint8(main["k1"][its[k:k + 1]])[0] for k in range(len(its))] \
            + [to_uint8(main["k2"][its[:1]])[0]]
        if len(its) < 2:
            cells = [cells[0], None, cells[1], None, cells[2]]
        grid_rows.append({"label": ds.people[p][:18], "images": cells})
    notes = [f"{len(dropped)} image(s) dropped (no face found)" if dropped else "every image had a face",
             "protection sessions: " + ("each image protected alone (separate sessions, as enrol/verify do)"
                                        if cfg.sessions == "separate" else
                                        "a person's images optimised jointly under one key (paper)"),
             "thresholds: PSR and attacks use the clean (unprotected) impostor distribution; revocability and "
             "stolen key use the protected system's own impostor distribution at the operating FMR",
             f"TAR@FAR is listed only where n_impostor x FAR >= 1 (n_impostor = {len(pairs.impostor)})"]
    report.write_report(out, metrics, scores, grid_rows,
                        ["original a", "original b", f"{cfg.main_variant} k1 (a)", f"{cfg.main_variant} k1 (b)",
                         f"{cfg.main_variant} k2 (a)"], config=cfgmod.to_dict(cfg), notes=notes, command=command)
    if group_md:   # the per-group section goes before the figures of both reports
        md, page = out / "report.md", out / "report.html"
        md.write_text(md.read_text().replace("## Figures", group_md + "\n## Figures", 1))
        page.write_text(page.read_text().replace("<h2>Figures</h2>", group_html + "<h2>Figures</h2>", 1))
    log.info("evaluate: wrote %s (%.0f s; %s)", out, time.time() - t0,
             ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return metrics
