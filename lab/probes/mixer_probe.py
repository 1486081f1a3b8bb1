"""Deployment-protocol probe of the feed-forward mixer (docs/mixer.md) against the naive mix, on LFW 'val' people.

Every image is protected alone (one forward pass per image; nothing ties two photos together but the key).
Per person p: key k1_p (enrolment) and k2_p (a second, independent key). Engines: ``naive`` (the identity band
= the key's code, no optimisation), ``mixer`` (each weights file given), and ``real`` (unprotected photos).
Scores are cosines of an evaluation recogniser that is in no loss (default dlib-resnet).

* threshold: FAR 1 % of impostor pairs = different people under their own (different) keys;
* TAR: pairs of different photos of one person, both under k1_p;
* stolen key: the first photo of another person q protected under k1_p, against every photo of p under k1_p;
* cross key: every photo of p under k1_p against every other photo of p under k2_p (k1-vs-k2 mated).

    PYTHONPATH=src python lab/probes/mixer_probe.py --mixer runs/mixer/fam_mixer_64.safetensors --people 50

Keys are derived from --seed and the person's name (reproducible); no image or key is written."""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np
import torch


def person_keys(name: str, seed: int):
    from faceanonymixer.keys import Key
    return tuple(Key(hashlib.sha256(f"mixer-probe|{seed}|{name}|{j}".encode()).digest()) for j in (1, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixer", action="append", default=[], help="mixer weights (.safetensors); repeatable")
    ap.add_argument("--untrained", type=float, metavar="ALPHA",
                    help="also an untrained mixer at this alpha (f = its semi-orthogonal start, seed 0)")
    ap.add_argument("--alpha", type=float, action="append", default=[],
                    help="also each --mixer with its alpha set to this value (a trade-off sweep); repeatable")
    ap.add_argument("--no-baselines", action="store_true", help="skip the real photos and the naive mix")
    ap.add_argument("--data", default="../shared/data/lfw/images")
    ap.add_argument("--cache", default="runs/data")
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--max-photos", type=int, default=4, help="photos per person at most")
    ap.add_argument("--recogniser", default="dlib-resnet")
    ap.add_argument("--far", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from faceanonymixer import mixer as mx
    from faceanonymixer.fr import get_recogniser
    from faceanonymixer.mixing import mix
    from faceanonymixer.pipeline import ProtectConfig, Protector
    from faceanonymixer.train.data import load_aligned, prepare_aligned

    images, persons = load_aligned(prepare_aligned(a.data, a.cache, 64, "val"))
    by: dict[str, list[int]] = {}
    for i, p in enumerate(persons):
        by.setdefault(str(p), []).append(i)
    names = sorted(n for n, idx in by.items() if len(idx) >= 2)
    order = np.random.default_rng(a.seed).permutation(len(names))
    names = [names[i] for i in order[: a.people]]
    prot = Protector(ProtectConfig())
    rec = get_recogniser(a.recogniser)
    G = prot.generator

    def tensor(idx):
        return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float().div(127.5).sub(1)

    engines: dict[str, object] = {} if a.no_baselines else {"naive": None}
    for path in a.mixer:
        engines[f"mixer:{path}"] = mx.load_mixer(path)
        for al in a.alpha:
            m = mx.load_mixer(path)
            with torch.no_grad():
                m.log_alpha.fill_(float(np.log(al)))
            engines[f"mixer:{path}@alpha{al:g}"] = m
    if a.untrained is not None:
        torch.manual_seed(0)
        engines[f"mixer:untrained-alpha{a.untrained:g}"] = mx.Mixer(
            G.num_ws, G.w_dim, G.z_dim, list(prot.plan.optimised_layers), alpha=a.untrained).eval()

    def protect(engine, x, key):                     # x [1,3,R,R]: one image, protected alone
        if engine is None:
            with torch.no_grad():
                ws = mix(prot.invert(x), prot.key_code(key), prot.plan)[0]
                return prot.synthesise(ws)
        return mx.protect_batch(engine, prot, x, key)[0]

    photos = {n: by[n][: a.max_photos] for n in names}
    n_img = sum(len(v) for v in photos.values())
    rows, report = [], dict(people=len(names), images=n_img, recogniser=a.recogniser, far=a.far, seed=a.seed)

    def embed(x):
        with torch.no_grad():
            return rec.embed_ffhq(x).float().numpy()

    # real photos
    emb_real = {n: embed(tensor(photos[n])) for n in names}
    for name, engine in ([] if a.no_baselines else [("real", "real")]) + list(engines.items()):
        t0 = time.time()
        own, cross, stolen = {}, {}, {}
        for pi, n in enumerate(names):
            k1, k2 = person_keys(n, a.seed)
            if engine == "real":
                own[n] = emb_real[n]
                continue
            own[n] = embed(torch.cat([protect(engine, tensor([i]), k1) for i in photos[n]]))
            cross[n] = embed(torch.cat([protect(engine, tensor([i]), k2) for i in photos[n]]))
            q = names[(pi + 1) % len(names)]
            stolen[n] = embed(protect(engine, tensor([photos[q][0]]), k1))
        gen = [float(own[n][i] @ own[n][j]) for n in names for i in range(len(own[n])) for j in range(i + 1, len(own[n]))]
        imp = [float(own[n][i] @ own[m][j]) for x, n in enumerate(names) for m in names[x + 1:]
               for i in range(len(own[n])) for j in range(len(own[m]))]
        gen, imp = np.array(gen), np.array(imp)
        thr = float(np.quantile(imp, 1 - a.far, method="higher"))
        r = dict(engine=name, threshold=round(thr, 4), tar=float((gen >= thr).mean()), n_genuine=len(gen),
                 n_impostor=len(imp), far_achieved=float((imp >= thr).mean()), mean_genuine=float(gen.mean()),
                 mean_impostor=float(imp.mean()))
        if engine != "real":
            st = np.array([float(stolen[n][0] @ e) for n in names for e in own[n]])
            cr = np.array([float(own[n][i] @ cross[n][j]) for n in names for i in range(len(own[n]))
                           for j in range(len(own[n])) if i != j])
            anon = np.array([float(own[n][i] @ emb_real[n][i]) for n in names for i in range(len(own[n]))])
            r.update(stolen_accept=float((st >= thr).mean()), n_stolen=len(st), mean_stolen=float(st.mean()),
                     cross_accept=float((cr >= thr).mean()), n_cross=len(cr), mean_cross=float(cr.mean()),
                     mean_cos_to_original=float(anon.mean()))
        r["seconds"] = round(time.time() - t0, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
    report["rows"] = rows
    print(f"\n{len(names)} LFW val people, {n_img} images, {a.recogniser}, threshold at FAR {a.far:g} of "
          "different-people-different-keys pairs, every image protected alone\n")
    print("| engine | TAR | stolen-key accept | cross-key accept | genuine / impostor / stolen mean cos | cos to original |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["engine"] == "real":
            print(f"| real (unprotected) | {100 * r['tar']:.1f} % | - | - | {r['mean_genuine']:.3f} / "
                  f"{r['mean_impostor']:.3f} / - | - |")
        else:
            print(f"| {r['engine']} | {100 * r['tar']:.1f} % | {100 * r['stolen_accept']:.1f} % | "
                  f"{100 * r['cross_accept']:.1f} % | {r['mean_genuine']:.3f} / {r['mean_impostor']:.3f} / "
                  f"{r['mean_stolen']:.3f} | {r['mean_cos_to_original']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
