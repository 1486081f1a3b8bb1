"""Identity diversity of style generators: mean cosine between the recogniser embeddings of two *unrelated* samples
(seed s vs seed s+1000), for several truncations. Lower = more distinct identities; real different people at
64 px score ~0.10 under SFace (lab/reports/model_report.md). Used to decide whether a training run helped.
With ``--band A-B`` it also prints the band-swap cosine: sample s against sample s with W+ layers A..B taken from
seed s+1000 (the model report's mixing measure, without its landmarks), to follow ``id_band`` training cheaply.

    python lab/probes/generator_diversity.py fam-stylegan2-64 runs/new_generator.safetensors [--n 96] [--psi 0.5 0.7 1.0]
        [--band 1-6]
"""
from __future__ import annotations

import argparse

import torch

from faceanonymixer.eval.embeddings import embed_ffhq
from faceanonymixer.eval.quality.generation import mix, parse_ranges, seed_ws, synth
from faceanonymixer.fr import get_recogniser
from faceanonymixer.models.loading import load_generator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generators", nargs="+", help="registry names or weight files")
    ap.add_argument("--n", type=int, default=96, help="sample pairs per truncation")
    ap.add_argument("--psi", type=float, nargs="+", default=[0.5, 0.7, 1.0])
    ap.add_argument("--recognisers", nargs="+", default=["sface", "dlib-resnet"])
    ap.add_argument("--band", default=None, help="also the band-swap cosine for this inclusive W+ range, e.g. 1-6")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    recs = {name: get_recogniser(name) for name in a.recognisers}
    band = None
    if a.band:
        (lo, hi), = parse_ranges(a.band)
        band = list(range(lo, hi + 1))
    cols = [f"{r} cos" for r in recs] + ([f"{r} band {a.band} cos" for r in recs] if band else [])
    print("| generator | psi | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for path in a.generators:
        G = load_generator(path)
        for psi in a.psi:
            wa, wb = seed_ws(G, range(a.n), psi), seed_ws(G, range(1000, 1000 + a.n), psi)
            xa, xb = synth(G, wa), synth(G, wb)
            ea = {k: embed_ffhq(r, xa) for k, r in recs.items()}
            cos = [float(torch.nn.functional.cosine_similarity(ea[k], embed_ffhq(r, xb), dim=1).mean())
                   for k, r in recs.items()]
            if band:
                xm = synth(G, mix(wa, wb, band, G.num_ws))
                cos += [float(torch.nn.functional.cosine_similarity(ea[k], embed_ffhq(r, xm), dim=1).mean())
                        for k, r in recs.items()]
            print(f"| {path} | {psi} | " + " | ".join(f"{c:.3f}" for c in cos) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
