"""``faceanonymixer fr-eval``: face-verification accuracy of one recogniser on a pairs protocol.

Every image is read, detected (YuNet; with several faces the central one, or the largest with ``--face largest``)
and aligned once (ArcFace 112 crop; dlib-resnet uses its own chip from the detected box via ``embed_image``),
embedded, and each pair is scored by cosine similarity. A pair
with an image that failed (unreadable, no face) is not dropped: it counts as an error in the 10-fold accuracy
and is listed. The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..align import align_arcface, get_detector, pick_face
from ..errors import FaceAnonyMixerError, ImageError
from ..fr import get_recogniser
from ..images import read_image
from .metrics import verification_report
from .protocols import Pair, PairsFileError, limit_pairs, read_pairs, sample_pairs, write_pairs_csv

log = logging.getLogger(__name__)

HELP = ("face-verification accuracy of a recogniser (10-fold accuracy, EER, TAR@FAR, AUC) on LFW pairs.txt, "
        "a CSV, or sampled pairs")


def add_arguments(p):
    p.add_argument("--pairs", help="LFW pairs.txt, CSV img_a,img_b,same, or 'sample:N' (N genuine + N impostor pairs "
                                   "drawn with --seed from the identity folders under --root)")
    p.add_argument("--root", help="image root: <root>/<name>/<name>_NNNN.jpg for pairs.txt; identity folders for "
                                  "sample:N; base of relative CSV paths")
    p.add_argument("--model", default="sface", help="recogniser name (faceanonymixer.fr): sface, dlib-resnet, "
                                                    "faceplugin-fr, arcface-ir-se50 (default sface)")
    p.add_argument("--model-path", default=None, help="explicit model file (else the registry lookup)")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most N pairs (genuine/impostor ratio kept)")
    p.add_argument("--sample", type=int, default=None, help="same as --pairs sample:N")
    p.add_argument("--seed", type=int, default=0, help="seed for sample:N (default 0); written into the JSON")
    p.add_argument("--batch", type=int, default=64, help="faces per recogniser batch (default 64)")
    p.add_argument("--far", default="1e-3", help="comma-separated FAR targets for TAR@FAR (default 1e-3)")
    p.add_argument("--folds", type=int, default=10, help="folds for the accuracy (default 10)")
    p.add_argument("--embed", choices=("auto", "crop", "image"), default="auto",
                   help="'crop': embed the ArcFace 112 crop; 'image': the recogniser's own chip from the photo and "
                        "box (embed_image, dlib); 'auto' (default): 'image' when the recogniser has it")
    p.add_argument("--face", choices=("center", "largest"), default="center",
                   help="several faces in an image: 'center' (default; benchmark crops like LFW centre the subject, "
                        "and a larger face is often a bystander cut by the border) or 'largest'")
    p.add_argument("--score-threshold", type=float, default=0.6, help="YuNet face score threshold (default 0.6)")
    p.add_argument("--device", default="cpu", help="torch device for the recogniser (default cpu)")
    p.add_argument("--save-pairs", default=None, help="write the pairs used to this CSV (e.g. the sampled ones)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the JSON result to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _pairs_from_args(args) -> tuple[list[Pair], str]:
    spec = args.pairs
    if args.sample is not None:
        if spec and not spec.startswith("sample:"):
            raise PairsFileError("give either --pairs FILE or --sample N, not both")
        spec = f"sample:{args.sample}"
    if not spec:
        raise PairsFileError("no pairs: pass --pairs pairs.txt|pairs.csv|sample:N (or --sample N) and --root DIR")
    if spec.startswith("sample:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise PairsFileError(f"--pairs {spec!r}: expected sample:N with an integer N") from None
        if not args.root:
            raise PairsFileError("sample:N needs --root: a folder of <person>/<images> identity folders")
        return sample_pairs(args.root, n, n, args.seed), f"sample:{n} seed={args.seed}"
    return read_pairs(spec, args.root), str(spec)


def _rel(p: Path, root) -> str:
    if root:
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            pass
    return str(p)


def embed_images(paths: list[Path], rec, mode: str, batch: int = 64, detector=None, progress: bool = True,
                 root=None, select: str = "center") -> tuple[dict[Path, np.ndarray], dict[Path, str], int]:
    """Embed each image once: ({path: embedding (D,)}, {path: error message}, number of multi-face images)."""
    detector = detector or get_detector()
    emb: dict[Path, np.ndarray] = {}
    errors: dict[Path, str] = {}
    multi = 0
    pending_paths: list[Path] = []
    pending: list[np.ndarray] = []

    def flush():
        if not pending:
            return
        x = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float().div(255.0)
        with torch.no_grad():
            z = rec.embed(x).detach().cpu().numpy().astype(np.float64)
        for p, e in zip(pending_paths, z):
            emb[p] = e
        pending.clear()
        pending_paths.clear()

    it = tqdm(paths, desc=f"embed ({rec.name})", unit="img", disable=not progress, file=sys.stderr)
    for p in it:
        try:
            img = read_image(p)
            face, n = pick_face(img, source=_rel(p, root), detector=detector, select=select)
        except ImageError as e:
            errors[p] = str(e)
            continue
        multi += n > 1
        if mode == "image":
            with torch.no_grad():
                emb[p] = rec.embed_image(img, face.xyxy).detach().cpu().numpy().astype(np.float64).reshape(-1)
        else:
            pending.append(align_arcface(img, face.landmarks5))
            pending_paths.append(p)
            if len(pending) >= batch:
                flush()
    flush()
    return emb, errors, multi


def evaluate_pairs(pairs: list[Pair], rec, mode: str = "crop", batch: int = 64, fars=(1e-3,), folds: int = 10,
                   detector=None, progress: bool = True, root=None, select: str = "center") -> dict:
    """Embed + score + metrics for a list of pairs (see module doc). Returns the JSON-ready result dict."""
    t0 = time.time()
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))
    emb, errors, multi = embed_images(paths, rec, mode, batch, detector, progress, root, select)
    scores = np.full(len(pairs), np.nan)
    labels = np.array([pair.same for pair in pairs], dtype=bool)
    for k, pair in enumerate(pairs):
        ea, eb = emb.get(pair.a), emb.get(pair.b)
        if ea is not None and eb is not None:
            scores[k] = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12))
    valid = np.isfinite(scores)
    if valid.sum() == 0 or labels[valid].all() or not labels[valid].any():
        raise FaceAnonyMixerError(f"only {int(valid.sum())} pairs could be scored ({len(errors)} of {len(paths)} "
                                  "images failed); cannot compute verification metrics. Check --root and the images.")
    rep = verification_report(scores, labels, valid=valid, fars=fars, n_folds=folds)
    rep.update(
        model=rec.name, embed=mode, face_select=select, n_images=len(paths), n_failed_images=len(errors),
        failed_images=[dict(path=_rel(p, root), error=msg) for p, msg in errors.items()],
        n_failed_pairs=int((~valid).sum()),
        n_failed_genuine=int((~valid & labels).sum()), n_failed_impostor=int((~valid & ~labels).sum()),
        multi_face_images=int(multi), seconds=round(time.time() - t0, 1),
    )
    return rep


def _json_safe(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(x, pct=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def run(args) -> int:
    try:
        fars = [float(f) for f in str(args.far).split(",") if f.strip()]
    except ValueError:
        raise FaceAnonyMixerError(f"--far {args.far!r}: expected comma-separated numbers like 1e-3,1e-2") from None
    pairs, source = _pairs_from_args(args)
    if args.max_pairs:
        pairs = limit_pairs(pairs, args.max_pairs)
    if args.save_pairs:
        write_pairs_csv(pairs, args.save_pairs, args.root)
    rec = get_recogniser(args.model, path=args.model_path, device=args.device)
    mode = args.embed
    if mode == "auto":
        mode = "image" if hasattr(rec, "embed_image") else "crop"
    if mode == "image" and not hasattr(rec, "embed_image"):
        raise FaceAnonyMixerError(f"--embed image: recogniser '{args.model}' has no embed_image; use --embed crop")
    n_gen = sum(p.same for p in pairs)
    print(f"fr-eval: model {args.model} ({mode}), pairs {source}: {len(pairs)} ({n_gen} genuine, "
          f"{len(pairs) - n_gen} impostor)", flush=True)
    rep = evaluate_pairs(pairs, rec, mode, args.batch, fars, args.folds, get_detector(args.score_threshold),
                         progress=not args.no_progress, root=args.root, select=args.face)
    rep = dict(command="fr-eval", pairs=source, root=str(args.root) if args.root else None,
               seed=args.seed if source.startswith("sample:") else None, **rep)

    which = "central" if args.face == "center" else "largest"
    print(f"images: {rep['n_images']} ({rep['n_failed_images']} failed, {rep['multi_face_images']} with several "
          f"faces: took the {which} one)")
    for f in rep["failed_images"][:50]:
        print(f"  failed: {f['error']}")
    if rep["n_failed_images"] > 50:
        print(f"  ... and {rep['n_failed_images'] - 50} more (see the JSON)")
    print(f"pairs: {rep['n_pairs']} ({rep['n_genuine']} genuine, {rep['n_impostor']} impostor), scored "
          f"{rep['n_scored']}, failed {rep['n_failed_pairs']} (counted as errors)")
    print(f"{args.folds}-fold accuracy: {_fmt(rep['accuracy'], True)} +- {_fmt(rep['accuracy_std'], True)} "
          f"(scored pairs only: {_fmt(rep['accuracy_valid_only'], True)})")
    print(f"EER: {_fmt(rep['eer'], True)} (threshold {_fmt(rep['eer_threshold'])})   AUC: {_fmt(rep['auc'])}")
    for t in rep["tar_at_far"]:
        extra = f" ({t['note']})" if t["note"] else ""
        print(f"TAR@FAR={t['far_target']:g}: {_fmt(t['tar'], True)} at threshold {_fmt(t['threshold'])}, achieved "
              f"FAR {_fmt(t['far_achieved'], True)} over {t['n_impostor']} impostor pairs{extra}")
    print(f"genuine cosine {rep['genuine_mean']:.3f} +- {rep['genuine_std']:.3f}, impostor "
          f"{rep['impostor_mean']:.3f} +- {rep['impostor_std']:.3f}; {rep['seconds']} s")
    rep = _json_safe(rep)
    text = json.dumps(rep, allow_nan=False)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    print(text, flush=True)
    return 0
