"""Unlinkability: the Gomez-Barrero et al. D<->sys metric (IEEE TIFS 13(6), 2018).

Re-implemented from the published formulas (the reference script's licence forbids vendoring it), with the
reference binning conventions so numbers are comparable with papers that used the script:

* H_m  ("mated"):     two protected templates of the SAME subject made with DIFFERENT keys;
* H_nm ("non-mated"): templates of DIFFERENT subjects, also with different keys;
* common bin edges ``linspace(min, max, n_bins + 1)`` over both score sets, density histograms y1 (mated),
  y2 (non-mated); LR = y1 / y2 with LR := 1 where y2 == 0;
* D<->(s) = 2 * w*LR / (1 + w*LR) - 1, then 0 where w*LR <= 1, then 1 where y2 == 0 (empty non-mated bin);
* D<->sys = trapezoid(D * y1, x=bin centres) (numpy 2 ``np.trapezoid``; ``np.trapz`` is deprecated).

D<->sys = 0: fully unlinkable; 1: fully linkable. Default ``n_bins = min(len(mated) // 10, 100)`` (the
reference's default, made an integer) and never below 2, since a trapezoid over one centre is always 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Unlinkability:
    dsys: float                 # global measure D<->sys in [0, 1]
    omega: float                # prior ratio p(H_m) / p(H_nm) used
    n_bins: int
    bin_centers: np.ndarray     # [n_bins]
    d_local: np.ndarray         # [n_bins] D<->(s) at each bin centre
    y_mated: np.ndarray         # [n_bins] density histogram of mated scores
    y_nonmated: np.ndarray      # [n_bins] density histogram of non-mated scores
    n_mated: int
    n_nonmated: int

    def to_dict(self) -> dict:
        return {"dsys": self.dsys, "omega": self.omega, "n_bins": self.n_bins,
                "n_mated": self.n_mated, "n_nonmated": self.n_nonmated}


def default_bins(n_mated: int) -> int:
    return int(max(2, min(n_mated // 10, 100)))


def dsys(mated, nonmated, omega: float = 1.0, n_bins: int | None = None) -> Unlinkability:
    """D<->sys of mated vs non-mated linkage scores (higher score = more similar)."""
    m = np.asarray(mated, dtype=np.float64).ravel()
    nm = np.asarray(nonmated, dtype=np.float64).ravel()
    m, nm = m[np.isfinite(m)], nm[np.isfinite(nm)]
    if m.size == 0 or nm.size == 0:
        raise ValueError(f"D<->sys needs mated and non-mated scores (got {m.size} and {nm.size})")
    if omega <= 0:
        raise ValueError("omega must be > 0")
    n_bins = default_bins(m.size) if n_bins is None else int(n_bins)
    if n_bins < 2:
        raise ValueError("n_bins must be >= 2")
    lo = min(m.min(), nm.min())
    hi = max(m.max(), nm.max())
    if hi <= lo:  # every score identical: widen so the histogram is defined (both densities then coincide)
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    y1 = np.histogram(m, bins=edges, density=True)[0]
    y2 = np.histogram(nm, bins=edges, density=True)[0]
    empty = y2 == 0
    lr = np.ones_like(y1)
    np.divide(y1, y2, out=lr, where=~empty)
    wlr = omega * lr
    d = 2.0 * wlr / (1.0 + wlr) - 1.0
    d[wlr <= 1] = 0.0
    d[empty] = 1.0
    value = float(np.trapezoid(d * y1, x=centers))
    return Unlinkability(dsys=float(np.clip(value, 0.0, 1.0)), omega=float(omega), n_bins=n_bins,
                         bin_centers=centers, d_local=d, y_mated=y1, y_nonmated=y2,
                         n_mated=int(m.size), n_nonmated=int(nm.size))


def plot(result: Unlinkability, path, title: str = "") -> None:
    """Both score densities (histograms) and D<->(s) on a twin axis; the w*LR = 1 crossing is where D turns on."""
    # matplotlib only when a plot is drawn: heavy to import, and the Agg backend must be chosen first
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.bin_centers
    width = (c[1] - c[0]) if c.size > 1 else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(c, result.y_nonmated, width=width, alpha=0.5, color="tab:blue", label=f"non-mated (n={result.n_nonmated})")
    ax.bar(c, result.y_mated, width=width, alpha=0.5, color="tab:red", label=f"mated (n={result.n_mated})")
    ax.set_xlabel("linkage score (cosine similarity)")
    ax.set_ylabel("probability density")
    ax2 = ax.twinx()
    ax2.plot(c, result.d_local, color="k", lw=1.5, drawstyle="steps-mid", label="D<->(s)")
    ax2.set_ylim(-0.02, 1.05)
    ax2.set_ylabel("D<->(s)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title(f"{title}  D<->sys = {result.dsys:.3f} (omega={result.omega:g})".strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
