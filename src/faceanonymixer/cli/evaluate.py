"""``faceanonymixer evaluate``: the evaluation suite on a data set (eval/evaluate.py); options override the
config, and the exact reproducible command is written into the report."""
from __future__ import annotations

import json
import os
import shlex

from ..fileio import shown
from ..eval.dataset import DATA_ENV, data_root
from ..eval.evaluate import EvalConfig, evaluate, load_config
from ..eval.groups import gaps_lines

HELP = "protect a data set and measure utility, anonymity, revocability, unlinkability, irreversibility, quality"


def add_arguments(p) -> None:
    p.add_argument("--config", default=None, help="YAML config (configs/eval.yaml); fields below override it")
    p.add_argument("--data", help=f"identity folders <DIR>/<person>/<images> (e.g. LFW images/); default: "
                   f"${DATA_ENV}/images, else the config's data")
    p.add_argument("--pairs", help="LFW pairs.txt / CSV protocol (optional)")
    p.add_argument("--out", help="output folder for report.md, report.html, metrics.json, scores.csv")
    p.add_argument("--max-people", type=int, dest="max_people", help="number of people drawn (seeded)")
    p.add_argument("--seed", type=int, help="seed of pair sampling, image choice and evaluation keys")
    p.add_argument("--steps", type=int, help="optimisation steps of the method (protect.optim.steps)")
    p.add_argument("--device", help="torch device (cpu, cuda)")
    p.add_argument("--groups", metavar="utkface|CSV",
                   help="per-group measures: 'utkface' (labels from UTKFace file names) or a CSV "
                        "image,<grouping>[,<grouping>...] (image = person/file, file name or person folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set attacks.steps=50 --set variants=[method,naive]")


def config_from_args(args) -> EvalConfig:
    return load_config(args.config, overrides_from_args(args))


def overrides_from_args(args) -> list[str]:
    overrides = []
    for name, key in (("data", "data"), ("pairs", "pairs"), ("out", "out"), ("max_people", "max_people"),
                      ("seed", "seed"), ("steps", "protect.optim.steps"), ("device", "device"),
                      ("groups", "groups")):
        v = getattr(args, name, None)
        if v is None and name == "data" and os.environ.get(DATA_ENV) and \
                not any(o.split("=", 1)[0].strip() == "data" for o in args.set or []):
            v = data_root(None)   # the environment beats the config file, an explicit --data beats both
        if v is not None:
            overrides.append(f"{key}={json.dumps(v) if isinstance(v, str) else v}")
    return overrides + list(args.set or [])


def run(args) -> int:
    cfg = config_from_args(args)
    # the exact, reproducible equivalent of this invocation (written into the report)
    command = "faceanonymixer evaluate" + (f" --config {shlex.quote(args.config)}" if args.config else "") + "".join(
        f" --set {shlex.quote(o)}" for o in overrides_from_args(args))
    m = evaluate(cfg, command=command)
    c = m["counts"]
    print(f"evaluated {', '.join(cfg.variants)} on {c['people']} people, {c['images']} images: wrote report.md, "
          f"report.html, metrics.json and scores.csv to {shown(str(cfg.out))}")
    for grouping, gp in m.get("groups_info", {}).get("gaps", {}).items():
        for line in gaps_lines(grouping, gp, ratios_only=True):
            print(line)
    return 0
