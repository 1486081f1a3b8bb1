"""How far apart are the 5 landmarks of two real faces after our FFHQ-style alignment? Context for the generator's
landmark-shift bar (`faceanonymixer model-report`): the held-out LFW faces the report uses, aligned to the
generator resolution, YuNet landmarks measured exactly as on generated samples; pairs of photos of one person and
of two different people, with the part that moves the face as a whole (similarity transform of the 5 points).
``--align template`` instead fits the 5 points to the ArcFace template by least squares before the FFHQ crop
(less framing freedom than FFHQ's eye/mouth quad): does a tighter alignment of the training data narrow the spread?

    python lab/probes/real_landmark_spread.py --data ../shared/data/lfw/images --n 400 [--align template]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from faceanonymixer import align as A
from faceanonymixer.eval.quality.landmarks import detect_batch, pose_change
from faceanonymixer.eval.quality.real_faces import load_real_sets
from faceanonymixer.images import read_image
from faceanonymixer.models.landmarks68 import framing_shift


def carried(lm5: np.ndarray, quad_lm: np.ndarray, resolution: int) -> np.ndarray:
    """Where the crop built from ``quad_lm`` puts the photo's points lm5 [5,2] -> [5,2] (R-pixel frame)."""
    return A.transform_points(A.quad_to_square_matrix(A.ffhq_quad(quad_lm)[0], resolution), lm5)


def template_aligned(root: Path, s, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """The set's photos re-read and FFHQ-cropped around the ArcFace template pulled back by the least-squares
    similarity of their 5 points: x [N,3,R,R] in [-1,1], and the photos' points carried into the crops [N,5,2]."""
    xs, pts = [], []
    for f, lm in zip(s.files, s.lm5):
        quad_lm = A.transform_points(A.invert_affine(A.umeyama_similarity(lm, A.ARCFACE_TEMPLATE)), A.ARCFACE_TEMPLATE)
        xs.append(A.align_ffhq(read_image(root / f), quad_lm, resolution))
        pts.append(carried(lm, quad_lm, resolution))
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(127.5).sub(1), np.stack(pts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/lfw/images", help="LFW root with the split file")
    p.add_argument("--n", type=int, default=400, help="faces per real set (two sets of disjoint people)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--pairs", type=int, default=2000, help="random different-people pairs")
    p.add_argument("--align", choices=["ffhq", "template"], default="ffhq",
                   help="ffhq: the aligner's eye/mouth quad (the training data's); template: least-squares fit")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    faces: list[tuple[str, np.ndarray]] = []
    err = []                                          # YuNet at R px vs the full photo's points carried over
    for s in load_real_sets(Path(a.data), a.n, 0, a.resolution)[:2]:
        if a.align == "ffhq":                          # the report's own crops
            x, pts = s.ffhq_tensor(), np.stack([carried(lm, lm, a.resolution) for lm in s.lm5])
        else:
            x, pts = template_aligned(Path(a.data), s, a.resolution)
        d = detect_batch(x)
        faces += [(person, d.lm[i]) for i, person in enumerate(s.person) if d.found[i]]
        err.append(pose_change(pts[d.found], d.lm[d.found]))
    err = np.concatenate(err)
    by_person: dict[str, list[np.ndarray]] = {}
    for person, lm in faces:
        by_person.setdefault(person, []).append(lm)
    same = [(ls[i], ls[j]) for ls in by_person.values() for i in range(len(ls)) for j in range(i + 1, len(ls))]
    rng = np.random.default_rng(0)
    diff = []
    while len(diff) < a.pairs:
        i, j = rng.integers(len(faces), size=2)
        if faces[i][0] != faces[j][0]:
            diff.append((faces[i][1], faces[j][1]))
    print(f"{len(faces)} faces of {len(by_person)} held-out people, {a.resolution} px, {a.align} alignment")
    print(f"YuNet on the {a.resolution}-px crops vs the full photo's points carried into them: "
          f"{100 * err.mean():.1f} % (median {100 * np.median(err):.1f} %) of the inter-ocular distance")
    print("pairs | n | YuNet shift / IOD: mean (median) | of it, framing (shift, roll, scale): mean (median)")
    for name, pairs in (("one person, two photos", same), ("two different people", diff)):
        la, lb = np.stack([u for u, _ in pairs]), np.stack([v for _, v in pairs])   # [P,5,2]
        iod = np.linalg.norm(la[:, 0] - la[:, 1], axis=1)
        fr = framing_shift(torch.from_numpy(la), torch.from_numpy(lb)).numpy() / iod
        pc = pose_change(la, lb)
        print(f"{name} | {len(pairs)} | {100 * pc.mean():.1f} % ({100 * np.median(pc):.1f} %) | "
              f"{100 * fr.mean():.1f} % ({100 * np.median(fr):.1f} %)")


if __name__ == "__main__":
    main()
