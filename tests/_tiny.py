"""A tiny real Protector (random 32-px StyleGAN2 + e4e, the installed SFace) for tests of the command-line
mechanics, in-process (``tiny_protector()``) or in a subprocess: ``python tests/_tiny.py protect ...`` runs the
real ``faceanonymixer`` CLI with it (fault-injection tests kill that process)."""
from __future__ import annotations

import sys

import torch


def tiny_protector(steps: int = 1, batch_people: int = 16, augment_copies: int = 1):
    from faceanonymixer.models.e4e import E4EInverter, Encoder4Editing
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.pipeline import ProtectConfig, Protector
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8}).eval()
    G.compute_latent_avg(500)
    enc = Encoder4Editing(n_styles=G.num_ws, input_size=32, units=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                          style_dim=32, style_hidden=16, stem_channels=8).eval()
    cfg = ProtectConfig()
    cfg.optim.steps = steps
    cfg.optim.augment_copies = augment_copies
    cfg.batch_people = batch_people
    return Protector(cfg, generator=G, inverter=E4EInverter(enc, G.latent_avg))


def run_cli(argv, protector=None):
    """The real CLI in-process with ``protector`` injected; a user error prints 'error: ...' and returns 2."""
    from faceanonymixer import cli
    from faceanonymixer.errors import FaceAnonyMixerError
    args = cli.build_parser().parse_args(argv)
    args.protector = protector
    try:
        return args._run(args)
    except FaceAnonyMixerError as e:
        print(f"error: {e}")
        return 2


def main(argv: list[str]) -> int:
    """The CLI with the tiny protector injected; ``--set protect.batch_people=N`` is honoured."""
    from faceanonymixer import cli
    from faceanonymixer.errors import FaceAnonyMixerError
    torch.set_num_threads(1)
    args = cli.build_parser().parse_args(argv)
    bp = [s.split("=", 1)[1] for s in getattr(args, "set", []) if s.startswith("protect.batch_people=")]
    args.protector = tiny_protector(batch_people=int(bp[-1]) if bp else 16)
    try:
        return int(args._run(args) or 0)
    except FaceAnonyMixerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
