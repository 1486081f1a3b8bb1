"""The ``groups`` section of ``faceanonymixer model-report``: the generator/encoder's round trip and a naive key mix,
measured per group of people (eval/groups.py: labels, intervals, gaps, table, plot).

Photos: every image under ``--group-data`` (restricted to a manifest's files and split), labelled by UTKFace file
names or a groups CSV, up to ``--per-group`` photos per group (seeded). Per photo: detect (the centred face) and
align; encode -> synthesise (the round trip); the round trip's W+ with the key layers of the method's plan taken
from ONE evaluation key for everybody (the naive mix: what a stolen key would open); gender/age by SSR-Net.
Recognisers: the independent ones (dlib-resnet, faceplugin-fr), never the loss network SFace. The operating
threshold of each recogniser = its threshold at ``FMR`` over all pairs of different photos of the selection
(UTKFace has no identities: different photos are taken as different people)."""
from __future__ import annotations

import logging
import sys

import numpy as np
import torch
from tqdm import tqdm

from ...align import align_ffhq, pick_face
from ...errors import FaceAnonyMixerError
from ...images import list_images, read_image
from ...keys import key_wplus
from ...mixing import make_plan, mix
from ...tensors import from_uint8
from .. import groups as G
from ..embeddings import embed_ffhq
from ..metrics import threshold_at_far
from ..protection import eval_key

log = logging.getLogger(__name__)

RECOGNISERS = ("dlib-resnet", "faceplugin-fr")   # independent of the method's losses (SFace) and of the encoder
FMR = 1e-2                                        # operating false-match rate of the threshold
KEY_PERSON = "model-report-groups"                # the one evaluation key of the naive mixes


def collect(args) -> tuple[list, G.GroupLabels, dict]:
    """(selected relative paths, labels, info) from --group-data / --groups / --manifest / --split."""
    root = args.group_data
    files = list_images(root, recursive=True, allow_empty=True)
    keys = [f.relative_to(root).as_posix() for f in files]
    info = {"root": str(root), "n_files": len(keys)}
    if args.manifest:
        listed = G.read_manifest(args.manifest, args.split)
        keys = [k for k in keys if k.rsplit("/", 1)[-1] in listed]
        info.update(manifest=str(args.manifest), split=args.split, n_in_manifest=len(keys))
    labels = G.load_labels(args.groups, keys)
    groupings = args.groupings or labels.groupings
    unknown = [g for g in groupings if g not in labels.groupings]
    if unknown:
        raise FaceAnonyMixerError(f"--groupings {unknown} are not in {labels.source} (it has {labels.groupings})")
    keys = [k for k in keys if labels.of(k)]
    chosen = G.select_per_group(keys, labels, groupings, args.per_group, args.seed)
    info.update(labels=labels.summary(), n_labelled=len(keys), n_selected=len(chosen), groupings=groupings,
                per_group=args.per_group)
    return chosen, labels, info


def measure(rep, args) -> dict:
    """The section: per grouping, per group, every measure with its count and 95 % interval."""
    gen = rep.need_G()
    if rep.inv is None:
        raise FaceAnonyMixerError(f"no encoder: {rep.data['models']['encoder'].get('reason')}")
    chosen, labels, info = collect(args)
    if not chosen:
        raise FaceAnonyMixerError(f"{args.group_data}: no labelled photo to measure ({info['labels']['n_bad']} "
                                  "names without labels); check --groups / --manifest / --split")
    res = gen.resolution
    found, refused, ffhq = [], [], []
    for k in tqdm(chosen, desc="groups: detect", file=sys.stderr):
        try:
            img = read_image(f"{args.group_data}/{k}")
            face, _ = pick_face(img, source=k, select="center")
            ffhq.append(align_ffhq(img, face.landmarks5, res))
            found.append(k)
        except FaceAnonyMixerError as e:
            refused.append((k, str(e).splitlines()[0][:200]))
    item_all = [labels.of(k) for k in chosen]
    found_set = set(found)
    ok_mask = np.array([k in found_set for k in chosen], dtype=bool)
    out: dict = {"data": info, "refused": [{"file": f, "why": w} for f, w in refused[:100]],
                 "n_found": len(found), "n_refused": len(refused)}
    x = from_uint8(np.stack(ffhq)) if ffhq else torch.zeros(0, 3, res, res)
    ys, zs = [], []
    w_key = key_wplus(eval_key(args.seed, KEY_PERSON, "k1"), gen)
    plan = make_plan(gen.num_ws, None, gen.resolution, getattr(gen, "identity_layers", None))
    for i in tqdm(range(0, len(x), 32), desc="groups: encode/mix", file=sys.stderr):
        with torch.no_grad():
            ws = rep.inv.encode(x[i:i + 32].to(rep.dev))
            ys.append(gen.synthesis(ws, noise_mode="const").float().clamp(-1, 1).cpu())
            wm, _ = mix(ws, w_key, plan)
            zs.append(gen.synthesis(wm, noise_mode="const").float().clamp(-1, 1).cpu())
    y = torch.cat(ys) if ys else x
    z = torch.cat(zs) if zs else x
    emb, thr = {}, {}
    for name in RECOGNISERS:
        try:
            r = rep.rec(name)
        except FaceAnonyMixerError as e:
            log.warning("groups: recogniser %s unavailable, skipped: %s", name, e)
            continue
        emb[name] = tuple(embed_ffhq(r, t).numpy().astype(np.float64) for t in (x, y, z))
        ex = emb[name][0]
        s = ex @ ex.T
        iu = np.triu_indices(len(ex), 1)
        thr[name] = threshold_at_far(s[iu], FMR) if len(iu[0]) else float("nan")
    if not emb:
        raise FaceAnonyMixerError("neither dlib-resnet nor faceplugin-fr could be loaded: run `faceanonymixer "
                                  "weights` to see what is missing")
    soft = None
    try:
        from ...fr.attributes import SoftBiometrics
        sb = SoftBiometrics()
        g0, a0 = (t.numpy() for t in sb.predict_ffhq(x))
        g1, a1 = (t.numpy() for t in sb.predict_ffhq(z))
        soft = ((g0 > 0.5) == (g1 > 0.5), np.abs(a0 - a1) <= 10.0)
    except FaceAnonyMixerError as e:
        log.warning("groups: gender/age agreement skipped: %s", e)
        out["soft_biometrics"] = {"reason": str(e)}
    item_found = [labels.of(k) for k in found]
    tables: dict = {}
    for grouping in info["groupings"]:
        table: dict = {}
        sel_all = G.members(item_all, grouping)
        sel = G.members(item_found, grouping)
        for grp in sel_all:
            row = {"face_found": G.proportion(int(ok_mask[sel_all[grp]].sum()), len(sel_all[grp]))}
            idx = sel.get(grp, np.zeros(0, np.int64))
            seed = args.seed
            for name, (ex, ey, ez) in emb.items():
                a, b, c = ex[idx], ey[idx], ez[idx]
                row[f"recon_top1[{name}]"] = G.top1_rate(a, b)
                row[f"recon_cos[{name}]"] = G.mean_ci((a * b).sum(1), seed=seed)
                row[f"identity_margin[{name}]"] = (G.mean_ci(G.identity_margins(a, b), seed=seed) if len(idx) >= 2
                                                   else G.mean_ci([]))
                row[f"recon_fd[{name}]"] = G.fd_ci(b, a, seed=seed)
                row[f"protected_fd[{name}]"] = G.fd_ci(c, a, seed=seed)
                row[f"psr[{name}]"] = G.proportion(int(((a * c).sum(1) < thr[name]).sum()), len(idx))
                if len(idx) >= 2:
                    row[f"photo_spread_cos[{name}]"] = G.mean_ci(G.pair_spread(a)[0], seed=seed)
                    spread, rate = G.pair_spread(c, thr[name])
                    row[f"key_spread_cos[{name}]"] = G.mean_ci(spread, seed=seed)
                    row[f"key_match_rate[{name}]"] = G.mean_ci(rate, seed=seed)
            if soft is not None:
                row["gender_agreement"] = G.proportion(int(soft[0][idx].sum()), len(idx))
                row["age_agreement"] = G.proportion(int(soft[1][idx].sum()), len(idx))
            table[grp] = row
        tables[grouping] = table
    out["context_samples_under_one_key"] = samples_spread(rep, gen, w_key, plan, len(chosen), args.seed, emb)
    out["thresholds"] = {n: {"value": t, "fmr": FMR, "over": "all pairs of different selected photos"}
                         for n, t in thr.items()}
    out["groups"] = tables
    out["gaps"] = {gp: G.gaps(t) for gp, t in tables.items()}
    out["measures"] = {m: G.DESCRIPTIONS[m] for m in G.MEASURES if m not in ("tar", "far", "stolen_key_accept")}
    out["method"] = (f"photos FFHQ-aligned at {res} px; reconstruction = encoder -> synthesis; protected = the "
                     f"reconstruction's W+ with layers {list(plan.key_layers)} from one evaluation key for everybody "
                     "(naive mix, no optimisation); cosines via embed_ffhq; intervals 95 % (Wilson for rates, "
                     "bootstrap 1000x for means, 200x for Fréchet distances, seeded)")
    plot = G.plot_groups(tables, rep.out / "groups.png", "model-report per group")
    out["images"] = [plot.name] if plot else []
    return out


def samples_spread(rep, gen, w_key, plan, n: int, seed: int, emb: dict) -> dict:
    """Context without groups: ``n`` generator samples (psi 0.7) and their naive mixes under the same key; per
    recogniser the mean cosine between different samples, and between their mixes (what one key does to
    faces that are unrelated by construction)."""
    from .generation import PSI, seed_ws, synth
    n = max(2, min(n, 256))
    with torch.no_grad():
        w = seed_ws(gen, list(range(seed, seed + n)))                        # [n,w_dim]
        w = w[:, None, :].expand(n, gen.num_ws, gen.w_dim).contiguous()      # [n,num_ws,w_dim]
        xs = synth(gen, w)
        zs = synth(gen, mix(w, w_key, plan)[0])
    out = {"n": n, "psi": PSI}
    for name in emb:
        r = rep.rec(name)
        for what, t in (("samples", xs), ("mixes", zs)):
            e = embed_ffhq(r, t).numpy().astype(np.float64)
            out[f"{what}_spread_cos[{name}]"] = G.mean_ci(G.pair_spread(e)[0], seed=seed)
    return out


def markdown(sec: dict, tables: dict) -> str:
    """The section (and its tables[grouping][group][measure]) as Markdown: per grouping a table, the gaps; the plot."""
    lines = ["## Per group", "", sec.get("method", ""), ""]
    d = sec.get("data", {})
    lines.append(f"Photos: {d.get('n_selected')} selected of {d.get('n_labelled')} labelled under {d.get('root')}"
                 + (f" (manifest {d.get('manifest')}, split {d.get('split')})" if d.get("manifest") else "")
                 + f"; {sec.get('n_refused')} without a face; {d.get('labels', {}).get('n_bad', 0)} names without "
                 "labels.")
    lines.append("")
    for gp, table in tables.items():
        lines += [f"### {gp}", "", G.table_markdown(table), ""]
        lines += [f"- {s}" for s in G.gaps_lines(gp, sec.get("gaps", {}).get(gp, {}))] + [""]
    ctx = sec.get("context_samples_under_one_key")
    if ctx:
        lines += [f"Context without groups ({ctx['n']} generator samples, psi {ctx['psi']}): mean cosine between "
                  "different samples and between their naive mixes under the same key: "
                  + "; ".join(f"{k} {v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for k, v in ctx.items()
                              if isinstance(v, dict) and v.get("value") is not None), ""]
    if sec.get("images"):
        lines += [f"![per group]({sec['images'][0]})", ""]
    return "\n".join(lines)
