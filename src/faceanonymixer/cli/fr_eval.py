"""``faceanonymixer fr-eval``: face-verification accuracy of one recogniser on a pairs protocol (eval/fr_eval.py);
the last line printed is one JSON object with every number."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import FaceAnonyMixerError
from ..align import get_detector
from ..eval.fr_eval import evaluate_pairs, json_safe
from ..eval.protocols import Pair, PairsFileError, limit_pairs, read_pairs, sample_pairs, write_pairs_csv
from ..fr import get_recogniser

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
    rep = json_safe(rep)
    text = json.dumps(rep, allow_nan=False)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    print(text, flush=True)
    return 0
