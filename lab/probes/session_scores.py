"""Same-key genuine and impostor accept rates of an evaluation's scores at a fixed threshold (e.g. the generator's
calibrated `verify` threshold), to compare `sessions: joint` with `sessions: separate` runs (docs/method.md).

    python lab/probes/session_scores.py runs/exp_sep40/scores.csv [more.csv] --threshold 0.7714 --recogniser sface
"""
from __future__ import annotations

import argparse

from faceanonymixer.eval.report import ScoreSet


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scores", nargs="+", help="scores.csv files written by `faceanonymixer evaluate`")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--recogniser", default="sface")
    ap.add_argument("--variant", default="method")
    a = ap.parse_args(argv)
    print(f"| scores | genuine mean | genuine min | genuine >= {a.threshold} | impostor >= {a.threshold} "
          f"| stolen key >= {a.threshold} | k1-vs-k2 >= {a.threshold} |")
    print("|---|---|---|---|---|---|---|")
    for path in a.scores:
        sc = ScoreSet.from_csv(path)
        g, i, s, m = (sc.get(a.variant, kind, a.recogniser) for kind in ("genuine", "impostor", "stolen_key", "mated"))
        if not g.size or not i.size:
            raise SystemExit(f"{path}: no {a.variant}/{a.recogniser} genuine or impostor scores")

        def rate(x):
            return f"{(x >= a.threshold).mean():.1%} ({int((x >= a.threshold).sum())}/{x.size})" if x.size else "-"
        print(f"| {path} | {g.mean():.3f} | {g.min():.3f} | {rate(g)} | {rate(i)} | {rate(s)} | {rate(m)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
