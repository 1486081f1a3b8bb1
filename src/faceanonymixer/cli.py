"""Console entry point ``faceanonymixer``. Each subcommand lives in the module named for its concept and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import FaceAnonyMixerError

# (subcommand, module). Order = order in --help.
COMMANDS = [
    ("weights", "faceanonymixer.registry"),
    ("fr-eval", "faceanonymixer.eval.fr_eval"),
    ("generate", "faceanonymixer.train.commands_generate"),
    ("invert", "faceanonymixer.train.commands_invert"),
    ("train", "faceanonymixer.train.commands_train"),
    ("keygen", "faceanonymixer.workflow"),
    ("protect", "faceanonymixer.workflow"),
    ("enrol", "faceanonymixer.workflow"),
    ("verify", "faceanonymixer.workflow"),
    ("revoke", "faceanonymixer.workflow"),
    ("evaluate", "faceanonymixer.eval.evaluate"),
    ("model-report", "faceanonymixer.eval.models_report"),
]

EXAMPLES = """examples:
  faceanonymixer weights                         # which model files are present / missing
  faceanonymixer fr-eval --pairs pairs.txt --root lfw/images --model sface
  faceanonymixer generate --seeds 0-15 --out samples/
  faceanonymixer invert photo.jpg --out recon/
  faceanonymixer keygen --out alice.key
  faceanonymixer protect photos/ --key alice.key --out protected/
  faceanonymixer enrol alice photos/alice --key alice.key --gallery gallery.db
  faceanonymixer verify alice probe.jpg --key alice.key --gallery gallery.db
  faceanonymixer revoke alice --new-key alice2.key --gallery gallery.db
  faceanonymixer evaluate --config configs/eval.yaml --max-people 100 --out report/
  faceanonymixer model-report --out runs/model_report   # quality of the embedded generator/encoder
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceanonymixer",
                                     description="Cancelable faces: key-controlled StyleGAN2 latent mixing (FaceAnonyMixer).",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:  # a module not written yet: the subcommand is simply absent
            if e.name == modname:
                continue
            raise
        # A module may serve several subcommands (workflow): it then exposes COMMANDS[name] = (help, add, run).
        if hasattr(mod, "SUBCOMMANDS"):
            if name not in mod.SUBCOMMANDS:
                continue
            help_, add, fn = mod.SUBCOMMANDS[name]
        else:
            help_, add, fn = mod.HELP, mod.add_arguments, mod.run
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(p)
        p.set_defaults(_run=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except FaceAnonyMixerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
