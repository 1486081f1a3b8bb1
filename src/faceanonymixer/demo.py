"""End-to-end demo (``python main.py --config configs/default.yaml``): the sample photos protected under two
keys, a grid original | key 1 | key 2, and a metric summary (matcher cosines)."""
from __future__ import annotations

import argparse

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import FaceAnonyMixerError
from .fr import get_recogniser
from .images import list_images, write_png_atomic
from .keys import Key
from .pipeline import Protector, to_uint8
from .registry import data_dir
from .workflow import load_config, verify_threshold


def _people(folder: Path) -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = {}
    for p in list_images(folder):
        people.setdefault(re.sub(r"[\d_]*(partial_face)?\d*$", "", p.stem) or p.stem, []).append(p)
    return people


def run(config_path=None, overrides=None) -> int:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    cfg = load_config(config_path, overrides)
    folder = Path(cfg.demo.samples) if cfg.demo.samples else data_dir() / "samples"
    out = Path(cfg.demo.out)
    people = _people(folder)
    prot = Protector(cfg.protect)
    k1, k2 = Key.from_passphrase("demo key one"), Key.from_passphrase("demo key two")
    names = list(people)
    r1 = prot.protect_people([people[n] for n in names], k1, names, steps=cfg.demo.steps)
    r2 = prot.protect_people([people[n] for n in names], k2, names, steps=cfg.demo.steps)
    matcher = get_recogniser(cfg.workflow.matcher)
    rows, summary = [], dict(anonymity_cos=[], same_key_cos=[], cross_key_cos=[], bad_items=r1.failures)
    with torch.no_grad():
        for a, b in zip(r1.results, r2.results):
            orig = torch.cat([prot.load_face(s)[0] for s in a.sources]).cpu()
            eo, e1, e2 = (matcher.embed_ffhq(t) for t in (orig, a.images, b.images))
            summary["anonymity_cos"] += (eo * e1).sum(1).tolist()
            summary["cross_key_cos"] += (e1 * e2).sum(1).tolist()
            if len(e1) > 1:
                s = e1 @ e1.T
                summary["same_key_cos"] += s[torch.triu(torch.ones_like(s), 1).bool()].tolist()
            for i in range(len(a.sources)):
                rows.append(np.concatenate([to_uint8(orig[i]), to_uint8(a.images[i]), to_uint8(b.images[i])], 1))
    grid = write_png_atomic(out / "grid.png", np.concatenate(rows, 0))
    stats = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in summary.items() if k != "bad_items"}
    stats.update(threshold=verify_threshold(cfg.workflow.threshold, prot.generator, matcher.name),
                 matcher=matcher.name, people=names,
                 bad_items=[f"{i}: {m}" for i, m in summary["bad_items"]],
                 key_fingerprints=[k1.fingerprint, k2.fingerprint])
    (out / "summary.json").write_text(json.dumps(stats, indent=1))
    print(f"grid (original | key 1 | key 2): {grid}")
    print("mean cosines (matcher %s): original vs protected %s, same person same key %s, key 1 vs key 2 %s"
          % (matcher.name, stats["anonymity_cos"], stats["same_key_cos"], stats["cross_key_cos"]))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args(argv)
    try:
        return run(a.config, a.set)
    except FaceAnonyMixerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
