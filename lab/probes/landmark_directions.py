"""Are landmark geometry and identity separable in a generator's mixing band? A closed-form test, no training.

Fits, by ridge regression on samples whose band comes from a second, independent w, the W directions through
which the band moves the 5 landmarks (faceplugin 68-point net: eye centres, nose tip, mouth corners; or only the
face's framing: shift, roll, scale). Then removes the top r of them from the band, as a fixed edit of the band
layers' input (w -> latent_avg + P (w - latent_avg), P projecting them out; exactly a change of those layers'
style weights), and measures the band swap of `faceanonymixer model-report` on the edited generator: SFace cosine
(bar < 0.3) and YuNet landmark shift (bar < 5 %). If the directions that move the landmarks also carry identity,
the shift falls only as the cosine rises.

    python lab/probes/landmark_directions.py fam-stylegan2-64 --fit 3000 --n 128 --ranks 0,2,4,6
"""
from __future__ import annotations

import argparse

import torch

from faceanonymixer.eval.embeddings import embed_ffhq
from faceanonymixer.eval.quality.generation import mix, parse_ranges, seed_ws, synth
from faceanonymixer.eval.quality.landmarks import detect_batch, pose_change
from faceanonymixer.fr import get_recogniser
from faceanonymixer.models.landmarks68 import Landmarks68, similarity_fit
from faceanonymixer.models.loading import load_generator


def similarity_params(p: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity of ref [5,2] onto each p [N,5,2] -> [N,4]: shift x, y and (s cos - 1, s sin)
    scaled by ref's spread, so all four are in pixels."""
    a, b, ca, cb = similarity_fit(ref.expand_as(p), p)
    t, spread = (cb - ca)[:, 0], (ref - ref.mean(0)).square().sum().sqrt()
    return torch.stack([t[:, 0], t[:, 1], spread * (a - 1), spread * b], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", help="weights file or registry name")
    p.add_argument("--band", default="1-6", help="W+ band (default 1-6, the shipped generator's)")
    p.add_argument("--fit", type=int, default=3000, help="samples for the regression (seeded, default 3000)")
    p.add_argument("--n", type=int, default=128, help="model-report seeds for the measurement (default 128)")
    p.add_argument("--ranks", default="0,2,4,6", help="numbers of directions removed (default 0,2,4,6)")
    p.add_argument("--target", choices=["points", "framing"], default="points",
                   help="regress the 10 point coordinates or only the 4 framing parameters (default points)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    G = load_generator(a.generator)
    (lo, hi), = parse_ranges(a.band)
    band = list(range(lo, hi + 1))
    avg = G.latent_avg.detach().double()
    lm, sface = Landmarks68(), get_recogniser("sface")

    g = torch.Generator().manual_seed(123)                # fit seeds: disjoint from the measurement's
    with torch.no_grad():
        w_a = G.mapping(torch.randn(a.fit, G.z_dim, generator=g))   # [F,512] everything but the band
        w_b = G.mapping(torch.randn(a.fit, G.z_dim, generator=g))   # [F,512] the band
        pts = torch.cat([Landmarks68.five(lm(synth(G, mix(w_a[i:i + 100], w_b[i:i + 100], band, G.num_ws))))
                         for i in range(0, a.fit, 100)]).double()    # [F,5,2]
    y = pts.reshape(a.fit, 10) if a.target == "points" else similarity_params(pts, pts.mean(0))
    y = y - y.mean(0)
    x = torch.cat([w_a.double() - avg, w_b.double() - avg], 1)       # [F,1024]: w_a as a covariate
    coef = torch.linalg.solve(x.T @ x + a.fit * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)  # ridge
    r2 = 1 - ((y - x @ coef) ** 2).sum(0) / (y ** 2).sum(0)
    print(f"{a.target}: R^2 of the linear fit per coordinate:", " ".join(f"{v:.2f}" for v in r2.tolist()))
    u = torch.linalg.svd(coef[G.w_dim:], full_matrices=False).U       # [512,k] the band's directions, strongest first

    w, w_p = seed_ws(G, range(a.n)), seed_ws(G, range(a.n, 2 * a.n))
    x_orig = synth(G, mix(w, w, [], G.num_ws))
    e_orig = embed_ffhq(sface, x_orig)
    print("directions removed | band swap: SFace cos | YuNet shift / IOD"
          " | edit alone: SFace cos to the unedited sample")
    for r in (int(v) for v in a.ranks.split(",")):
        proj = torch.eye(G.w_dim, dtype=torch.double) - u[:, :r] @ u[:, :r].T

        def edit(ws: torch.Tensor) -> torch.Tensor:                    # the band layers see P w only
            ws = ws.clone()
            ws[:, band] = (avg + (ws[:, band].double() - avg) @ proj.T).to(ws.dtype)
            return ws
        x0, xm = synth(G, edit(mix(w, w, [], G.num_ws))), synth(G, edit(mix(w, w_p, band, G.num_ws)))
        d0, dm = detect_batch(x0), detect_batch(xm)
        both = d0.found & dm.found
        e0 = embed_ffhq(sface, x0)
        cos = torch.nn.functional.cosine_similarity(e0, embed_ffhq(sface, xm), dim=1).mean().item()
        self_cos = torch.nn.functional.cosine_similarity(e_orig, e0, dim=1).mean().item()
        print(f"{r} | {cos:.3f} | {100 * pose_change(d0.lm[both], dm.lm[both]).mean():.1f} % | {self_cos:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
