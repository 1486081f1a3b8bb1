"""The learned linkage attack (eval/linkage.py): its cost at the default size, and a reduced real measurement.

Default mode (unit costs, then the projection of a default-size run): seconds per attacker image protected with the
method (50 steps, people batched like the evaluation), seconds per fine-tuning epoch of the student at N = 100 and
500 pairs, and the ridge fit; printed as JSON with the projected wall time of ``linkage.n_pairs`` x
``linkage.settings`` for the method variant.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_linkage.py --threads 2 [--config configs/eval.yaml]

``--run``: the attack on real data, the same code path as ``faceanonymixer evaluate`` with ``linkage`` in
``attacks.names`` but without the evaluation's other steps (no second key, no stolen-key images, no other
attacks): test people's photos protected with their evaluation key k1 (as the evaluation does), attacker pairs from
the 'train' split; writes ``<out>/linkage.json`` and prints the result table (markdown).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_linkage.py --run --threads 1 --people 40 \\
        --images-per-person 2 --variants method,naive,blur --set "linkage.n_pairs=[100]" --out runs/linkage40
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faceanonymixer import fr
from faceanonymixer.eval import evaluate as ev
from faceanonymixer.eval import linkage as lk
from faceanonymixer.eval.dataset import data_root, drop_items, prepare, select_dataset
from faceanonymixer.eval.protection import KEYED, ImageCache, Method, eval_key, variant_hash
from faceanonymixer.tensors import from_uint8

REPO = Path(__file__).resolve().parents[1]


def _cfg(a):
    over = list(a.set or [])
    over.append(f'data="{data_root(a.data)}"')
    if a.variants:
        over.append(f"variants=[{a.variants}]")
        over.append(f"main_variant={a.variants.split(',')[0]}")
    return ev.load_config(a.config, over)


def units(a) -> dict:
    cfg = _cfg(a)
    lc = cfg.linkage
    out = {"threads": torch.get_num_threads(), "n_pairs": lc.n_pairs, "settings": lc.settings}
    teacher = fr.get_recogniser(lc.teacher)
    student = fr.get_recogniser(lc.student)
    g = torch.Generator().manual_seed(0)
    # 1. protection: one batch of people (cfg.people_per_batch) x images_per_person, the method's settings
    m = Method(cfg)
    n_people = cfg.people_per_batch
    x = torch.rand(n_people * lc.images_per_person, 3, m.resolution(), m.resolution(), generator=g) * 2 - 1
    groups = [np.arange(i * lc.images_per_person, (i + 1) * lc.images_per_person) for i in range(n_people)]
    m.protect("method", [x[:1]], [eval_key(0, "warm", "k1")])      # warm-up (model loading, first-call costs)
    t0 = time.time()
    m.protect("method", [x[gr] for gr in groups], [eval_key(1, f"p{i}", "k1") for i in range(n_people)])
    out["protect_s_per_image"] = round((time.time() - t0) / len(x), 3)
    logging.info("protection: %.2f s per image (%d images, %d people per batch)", out["protect_s_per_image"],
                 len(x), n_people)
    # 2. fine-tuning: seconds per epoch (train split + held-out evaluation) at each N, on random images
    lc1 = lk.LinkageConfig(**{**lc.__dict__, "max_epochs": 1, "patience": 1})
    out["epoch_s"] = {}
    for n in lc.n_pairs:
        xa = torch.rand(n, 3, m.resolution(), m.resolution(), generator=g) * 2 - 1
        tgt = torch.nn.functional.normalize(torch.randn(n, teacher.dim, generator=g), dim=1)
        t0 = time.time()
        lk.train_student(student, xa, tgt, np.arange(n) // lc.images_per_person, lc1)
        out["epoch_s"][str(n)] = round(time.time() - t0, 1)
        logging.info("fine-tuning: %.1f s for one epoch at N = %d", out["epoch_s"][str(n)], n)
    # 3. the ridge map
    n = max(lc.n_pairs)
    xe = np.random.default_rng(0).standard_normal((n, teacher.dim))
    t0 = time.time()
    lk.fit_ridge(xe, xe + 0.1, np.arange(n) % 5 == 0)
    out["ridge_s"] = round(time.time() - t0, 2)
    # projection for the method variant: attacker pairs (max N, each setting) + the test people under the fixed key
    test_imgs = cfg.max_people * cfg.images_per_person
    imgs = len(lc.settings) * max(lc.n_pairs) + (test_imgs if "fixed" in lc.settings else 0)
    epochs = a.assume_epochs
    train = len(lc.settings) * sum(out["epoch_s"][str(n)] * epochs for n in lc.n_pairs)
    out["projection_method_variant"] = {
        "protected_images": imgs, "protect_s": round(imgs * out["protect_s_per_image"]),
        "assumed_epochs": epochs, "train_s": round(train),
        "total_h": round((imgs * out["protect_s_per_image"] + train) / 3600, 2)}
    return out


def run(a) -> dict:
    cfg = _cfg(a)
    t0 = time.time()
    out_dir = Path(a.out)
    cache = out_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    needs = any(v in KEYED or v == "reconstruction" for v in cfg.variants)
    method = Method(cfg) if needs else None
    res = method.resolution() if method else 64
    ds = select_dataset(cfg.data, a.people, 2, a.images_per_person, cfg.seed, split=cfg.split)
    arc, ff, ok, _ = prepare(ds, res, cache)
    ds, idx = drop_items(ds, ok, 2)
    arc, ffhq = arc[idx], from_uint8(ff[idx])
    groups = [np.flatnonzero(ds.person_of == p) for p in range(len(ds.people))]
    prot, hashes = {}, {}
    for v in cfg.variants:
        hashes[v] = variant_hash(cfg, v, res)
        keys = [eval_key(cfg.seed, p, "k1") for p in ds.people] if v in KEYED else [None] * len(groups)
        prot[v] = {"k1": lk.protect_sets(v, cfg, method, ds.people, groups, ffhq, keys,
                                         ImageCache(cache / f"test_{v}_{hashes[v]}"), "k1", ds.items)}
    t_prot = time.time() - t0
    r = lk.run(cfg, ds, arc, ffhq, prot, method, cache, hashes)
    r["_info"]["test_protect_seconds"] = round(t_prot, 1)
    r["_info"]["total_seconds"] = round(time.time() - t0, 1)
    r["_info"]["command"] = " ".join(sys.argv)
    (out_dir / "linkage.json").write_text(json.dumps(r, indent=1, default=str))
    print(table(r))
    return r


def table(r: dict) -> str:
    lines = ["| variant | key setting | N | attack | Top-1 before | Top-1 after | Top-5 after | Top-1 clean | chance "
             "| queries / gallery ids | epochs |", "|" + "---|" * 11]
    for v, per in r.items():
        if v.startswith("_"):
            continue
        for kind, label in (("linkage", "student"), ("linkage_feature", "feature (ridge)")):
            for s, by_n in per[kind].items():
                for n, e in by_n.items():
                    lines.append(f"| {v} | {s} | {n} | {label} | {100 * e['top1_before']:.1f} | "
                                 f"{100 * e['top1_after']:.1f} | {100 * e['top5_after']:.1f} | "
                                 f"{100 * e['top1_clean']:.1f} | {100 * e['chance']:.1f} | "
                                 f"{e['n_queries']} / {e['n_gallery_identities']} | {e.get('epochs', '-')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "eval.yaml"))
    ap.add_argument("--data", help="identity folders (default $FACEANONYMIXER_LFW/images)")
    ap.add_argument("--set", action="append", help="config override key=value (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", action="store_true", help="the reduced real measurement instead of unit costs")
    ap.add_argument("--people", type=int, default=40, help="--run: test people ('val' split)")
    ap.add_argument("--images-per-person", type=int, default=2, help="--run: test photos per person")
    ap.add_argument("--variants", help="--run: comma-separated variants (default: the config's)")
    ap.add_argument("--out", default="runs/linkage", help="--run: output folder (linkage.json, cache)")
    ap.add_argument("--assume-epochs", type=int, default=15, help="epochs per fine-tune in the projection")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.run:
        run(a)
    else:
        print(json.dumps(units(a), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
