"""Console entry point ``faceanonymixer``: one module per command in this package, each exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; the work itself lives in the library modules they call.
Parsing never takes prefixes of options and never repeats an unknown option's value (it may be a secret)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import FaceAnonyMixerError
from ..fileio import shown

# (subcommand, module). Order = order in --help.
COMMANDS = [
    ("weights", "faceanonymixer.cli.weights"),
    ("fr-eval", "faceanonymixer.cli.fr_eval"),
    ("generate", "faceanonymixer.cli.generate"),
    ("invert", "faceanonymixer.cli.invert"),
    ("train", "faceanonymixer.cli.train"),
    ("keygen", "faceanonymixer.cli.keygen"),
    ("protect", "faceanonymixer.cli.protect"),
    ("enrol", "faceanonymixer.cli.enrol"),
    ("verify", "faceanonymixer.cli.verify"),
    ("revoke", "faceanonymixer.cli.revoke"),
    ("gallery", "faceanonymixer.cli.gallery"),
    ("evaluate", "faceanonymixer.cli.evaluate"),
    ("model-report", "faceanonymixer.cli.model_report"),
    ("calibrate", "faceanonymixer.cli.calibrate"),
    ("serve", "faceanonymixer.cli.serve"),
    ("client", "faceanonymixer.cli.client"),
]

EXAMPLES = """examples:
  faceanonymixer weights                         # which model files are present / missing
  faceanonymixer fr-eval --pairs pairs.txt --root lfw/images --model sface
  faceanonymixer generate --seeds 0-15 --out samples/
  faceanonymixer invert photo.jpg --out recon/
  faceanonymixer train generator --config configs/train_generator.yaml --minutes 60 --export gen.safetensors
  faceanonymixer keygen --out alice.key
  faceanonymixer protect photos/ --key alice.key --out protected/
  faceanonymixer enrol alice photos/alice --key alice.key --gallery gallery.db
  faceanonymixer verify alice probe.jpg --key alice.key --gallery gallery.db
  faceanonymixer revoke alice --new-key alice2.key --gallery gallery.db
  faceanonymixer gallery check --gallery gallery.db
  faceanonymixer evaluate --config configs/eval.yaml --max-people 100 --out report/
  faceanonymixer model-report --out runs/model_report   # quality of the embedded generator/encoder
  faceanonymixer calibrate report/scores.csv --far 0.001  # verify threshold from an evaluation's scores
  faceanonymixer serve token add laptop --db sqlite:///service.db   # prints the API token once
  faceanonymixer serve --config configs/serve.yaml --db sqlite:///service.db
  faceanonymixer client enrol alice photos/alice --key alice.key --server http://127.0.0.1:8000
  faceanonymixer client verify alice probe.jpg --key alice.key --server http://127.0.0.1:8000
"""


class SafeParser(argparse.ArgumentParser):
    """argparse without prefix matching (``--passphrase`` must not silently become ``--passphrase-env``) and
    whose errors never repeat the values of options it did not recognise (they may be secrets)."""

    def __init__(self, *a, **kw):
        kw["allow_abbrev"] = False
        super().__init__(*a, **kw)

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            opts = sorted({a.split("=", 1)[0] for a in extras if a.startswith("-")})
            msg = (f"unrecognised option(s): {', '.join(shown(o) for o in opts)}" if opts else
                   f"{len(extras)} unexpected value(s)") + " (values not shown)"
            if any(o.startswith("--pass") for o in opts):
                msg += (". A passphrase is never taken on the command line (it shows in `ps` and shell history; if "
                        "you typed one, choose another): put it in an environment variable and pass --passphrase-env "
                        "VAR")
            self.error(msg)
        return ns


def build_parser() -> argparse.ArgumentParser:
    parser = SafeParser(prog="faceanonymixer",
                                     description="Cancelable faces: key-controlled StyleGAN2 latent mixing (FaceAnonyMixer).",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SafeParser)
    for name, modname in COMMANDS:
        mod = importlib.import_module(modname)
        help_, add, fn = mod.HELP, mod.add_arguments, mod.run
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(p)
        p.set_defaults(_run=fn)
    return parser


class _EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file name with a newline cannot forge a line of output."""

    def format(self, record):
        return shown(super().format(record))


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()          # imports every command module (torch): Ctrl-C may land here too
        args = parser.parse_args(argv)
        handler = logging.StreamHandler()
        handler.setFormatter(_EscapingFormatter("%(levelname)s %(message)s"))
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except FaceAnonyMixerError as e:
        print(f"error: {shown(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written is left behind; run the same command again to resume "
              "(protect continues where it stopped)", file=sys.stderr)
        return 130
    except OSError as e:   # disk full, permissions, a vanished file: a message, not a traceback
        what = shown(e.filename) + ": " if e.filename else ""
        print(f"error: {what}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
