"""``faceanonymixer model-report``: measure a generator/encoder pair (eval/quality/) -> model_report.json + .md."""
from __future__ import annotations

import cv2
import torch

from ..errors import FaceAnonyMixerError
from ..eval.dataset import DATA_ENV, data_root
from ..eval.groups import gaps_lines
from ..eval.quality.markdown import one_line
from ..eval.quality.report import DEFAULT_MIX, Report

HELP = "measure the embedded generator/encoder (detection, style mixing, FD-dlib, inversion) -> JSON + Markdown"


def add_arguments(p):
    p.add_argument("--generator", default="fam-stylegan2-64", help="registry name or generator file")
    p.add_argument("--encoder", default="fam-e4e-64", help="registry name or encoder weights file")
    p.add_argument("--data", default=None,
                   help="identity folders <root>/<person>/<images>; only held-out ('val') people are used "
                        f"(default: ${DATA_ENV}/images)")
    p.add_argument("--n-samples", type=int, default=256, help="generator samples for the metrics (default 256)")
    p.add_argument("--n-real", type=int, default=256, help="real faces per real set (default 256)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="first sample seed and the seed of the real-photo selection (default 0)")
    p.add_argument("--mix-layers", default=DEFAULT_MIX,
                   help=f"comma list of inclusive W+ ranges tried as the identity band (default {DEFAULT_MIX})")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="also measure encoder + N steps of the pipeline's latent refinement (0 = skip; paper: 150)")
    p.add_argument("--refine-n", type=int, default=32, help="real faces (the first of set A) for the refinement rows")
    p.add_argument("--refine-lr", type=float, default=None, help="refinement Adam lr (default: the pipeline's)")
    p.add_argument("--device", default="cpu", help="torch device for the generator/encoder/SFace (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0 = leave as is)")
    g = p.add_argument_group("per group (docs/evaluation.md, 'Per group')")
    g.add_argument("--groups", default=None, metavar="utkface|CSV",
                   help="measure the round trip and a naive key mix per group: 'utkface' (labels from UTKFace file "
                        "names) or a CSV image,<grouping>[,<grouping>...]")
    g.add_argument("--group-data", dest="group_data", default=None, metavar="DIR",
                   help="the photos of the groups (any folder; default: --data)")
    g.add_argument("--manifest", default=None, metavar="CSV", help="use only the files listed in this CSV (column file)")
    g.add_argument("--split", default=None, help="with --manifest: only rows of this split (e.g. val)")
    g.add_argument("--per-group", dest="per_group", type=int, default=100, help="photos per group (default 100)")
    g.add_argument("--groupings", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=None,
                   help="comma list of groupings to select and report (default: every grouping of the labels; "
                        "UTKFace: cohort,race,gender,age)")
    g.add_argument("--only-groups", dest="only_groups", action="store_true",
                   help="measure only the groups (no samples, mixing, FD-dlib or encoder sections; --data not needed)")


def run(args) -> int:
    for k, v in (("groups", None), ("group_data", None), ("manifest", None), ("split", None), ("per_group", 100),
                 ("groupings", None), ("only_groups", False)):
        if not hasattr(args, k):   # a Namespace built by a caller (tests, notebooks) without the group options
            setattr(args, k, v)
    if args.only_groups and not args.groups:
        raise FaceAnonyMixerError("--only-groups needs --groups utkface|CSV (and --group-data DIR)")
    if not (args.only_groups and args.data is None):
        args.data = data_root(args.data)   # --data, else $FACEANONYMIXER_LFW, else an error naming both
    if args.groups and args.group_data is None:
        if args.data is None:
            raise FaceAnonyMixerError("--groups needs --group-data DIR (the folder of the labelled photos)")
        args.group_data = args.data
    saved = torch.get_num_threads(), cv2.getNumThreads()
    if getattr(args, "threads", 0):
        torch.set_num_threads(int(args.threads))
        cv2.setNumThreads(int(args.threads))
    try:
        rep = Report(args)
        data = rep.run()
    finally:  # a caller in the same process (tests, notebooks) keeps its own settings
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    print(f"wrote {rep.out / 'model_report.json'} and model_report.md")
    for k, v in data["sections"].items():
        if v.get("status") != "ok":
            print(f"  {k}: {v['status']}: {one_line(v['reason'])}")
    for grouping, gp in data["sections"].get("groups", {}).get("gaps", {}).items():
        for line in gaps_lines(grouping, gp, ratios_only=True):
            print(f"  {line}")
    return 1 if rep.errors else 0
