"""Scores -> metrics -> report files.

``ScoreSet`` holds every raw comparison score (variant, pair kind, item a, item b, recogniser, score) and
round-trips through ``scores.csv``; ``summarise`` turns a ScoreSet into the metrics dict (the shape of
``metrics.json``, see docs/evaluation.md); ``write_report`` writes ``report.md``, a self-contained
``report.html`` (every image embedded as base64), ``metrics.json``, ``scores.csv`` and the plots.

Pair kinds (score = cosine similarity, "match" means score >= threshold):

==================== =========================================================================================
``genuine``          same person, same key, different images: (P_k1(x_s,i), P_k1(x_s,j)); variant ``original``: (x_s,i, x_s,j)
``impostor``         different people, each with their own key: (P_k1s(x_s,i), P_k1t(x_t,j)); ``original``: (x_s,i, x_t,j)
``orig_prot_same``   (x_s,i, P_k1(x_s,i)): the original and its own protected image (anonymity / PSR)
``orig_prot_other``  (x_s,j, P_k1(x_s,i)), j != i: another original of the same person vs the protected image
``mated``            (P_k1(x_s,i), P_k2(x_s,j)), i != j, same pairs as ``genuine``: revocability + unlinkability
``nonmated``         (P_k1(x_s,i), P_k2(x_t,j)), same pairs as ``impostor``: unlinkability
``stolen_key``       (P_ks(x_s,0), P_ks(x_t,j)): impostor t protected with victim s's key vs s's enrolled face
``attack:<name>``    (x_s,i, A(P_k1(x_s,i))): an irreversibility attack's output vs the original
==================== =========================================================================================
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from . import unlinkability as unl

ORIGINAL = "original"          # the unprotected variant
TAR_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
PSR_FMRS = (1e-2, 1e-3)


def fmt_rate(x: float) -> str:
    """FMR/FAR keys written like ``1e-3`` (the metrics.json convention)."""
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


# --- raw scores --------------------------------------------------------------------------------------
@dataclass
class ScoreSet:
    """Every raw score, grouped by (variant, kind, recogniser)."""
    groups: dict = field(default_factory=dict)  # (variant, kind, recogniser) -> (list[a], list[b], np.ndarray)

    def add(self, variant: str, kind: str, recogniser: str, items_a, items_b, scores) -> None:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        items_a, items_b = list(items_a), list(items_b)
        assert len(items_a) == len(items_b) == scores.size, (len(items_a), len(items_b), scores.size)
        key = (variant, kind, recogniser)
        if key in self.groups:
            a0, b0, s0 = self.groups[key]
            self.groups[key] = (a0 + items_a, b0 + items_b, np.concatenate([s0, scores]))
        else:
            self.groups[key] = (items_a, items_b, scores)

    def get(self, variant: str, kind: str, recogniser: str) -> np.ndarray:
        g = self.groups.get((variant, kind, recogniser))
        return g[2] if g is not None else np.zeros(0)

    def has(self, variant: str, kind: str, recogniser: str) -> bool:
        return self.get(variant, kind, recogniser).size > 0

    def variants(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.groups))

    def kinds(self, variant: str | None = None) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.groups if variant is None or k[0] == variant))

    def recognisers(self) -> list[str]:
        return list(dict.fromkeys(k[2] for k in self.groups))

    def __len__(self) -> int:
        return sum(g[2].size for g in self.groups.values())

    def to_csv(self, path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["variant", "kind", "item_a", "item_b", "recogniser", "score"])
            for (variant, kind, rec), (a, b, s) in self.groups.items():
                for ia, ib, sc in zip(a, b, s):
                    w.writerow([variant, kind, ia, ib, rec, repr(float(sc))])

    @classmethod
    def from_csv(cls, path) -> "ScoreSet":
        out = cls()
        rows: dict = {}
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                g = rows.setdefault((r["variant"], r["kind"], r["recogniser"]), ([], [], []))
                g[0].append(r["item_a"]); g[1].append(r["item_b"]); g[2].append(float(r["score"]))
        for (v, k, rec), (a, b, s) in rows.items():
            out.add(v, k, rec, a, b, s)
        return out


# --- metric helpers ----------------------------------------------------------------------------------
def match_rate(scores, thr: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float(np.mean(s >= thr)) if s.size else float("nan")


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of a proportion k/n (used to say whether two rates are distinguishable)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def fmr_threshold(impostor, fmr: float) -> float:
    """Threshold whose false-match rate on ``impostor`` is <= fmr (match iff score >= threshold)."""
    return float(metrics.fmr_threshold(np.asarray(impostor, dtype=np.float64), fmr))


def _labels(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(genuine, dtype=np.float64).ravel()
    i = np.asarray(impostor, dtype=np.float64).ravel()
    return np.concatenate([g, i]), np.concatenate([np.ones(g.size, bool), np.zeros(i.size, bool)])


def verification(genuine, impostor, fars=TAR_FARS) -> dict:
    """EER, AUC, TAR@FAR, 10-fold accuracy and counts (eval/metrics.py). A TAR whose FAR cannot be resolved with
    the available impostor pairs (fewer than 1/FAR) is null with a note; 1e-4 is listed only when resolvable."""
    g = np.asarray(genuine, dtype=np.float64).ravel()
    i = np.asarray(impostor, dtype=np.float64).ravel()
    out = {"n_genuine": int(g.size), "n_impostor": int(i.size)}
    if g.size == 0 or i.size == 0:
        return out | {"eer": None, "auc": None, "tar": {}, "accuracy_10fold": None}
    s, y = _labels(g, i)
    out["eer"], out["eer_threshold"] = (float(v) for v in metrics.eer(s, y))
    out["auc"] = float(metrics.auc(s, y))
    tar, notes = {}, {}
    for row in metrics.tar_at_far(s, y, fars):
        k = fmt_rate(row["far_target"])
        if k == "1e-4" and not math.isfinite(row["tar"]):
            continue
        tar[k] = float(row["tar"]) if math.isfinite(row["tar"]) else None
        if row.get("note"):
            notes[k] = row["note"]
    out["tar"] = tar
    if notes:
        out["tar_notes"] = notes
    # 10-fold accuracy on a BALANCED set (LFW-style): every genuine pair and as many impostor pairs, drawn with a
    # fixed seed; on the full, impostor-heavy set accuracy would just reflect the class ratio.
    k = min(g.size, i.size)
    sub = np.sort(np.random.default_rng(0).choice(i.size, size=k, replace=False))
    gb = np.random.default_rng(1).choice(g.size, size=k, replace=False) if g.size > k else np.arange(g.size)
    sb, yb = _labels(g[np.sort(gb)], i[sub])
    try:
        kf = metrics.kfold_accuracy(sb, yb, n_folds=10)
        out["accuracy_10fold"] = {"mean": kf["mean"], "std": kf["std"], "n_pairs": int(2 * k)}
    except ValueError:  # fewer pairs than folds
        out["accuracy_10fold"] = None
    return out


def _rate(scores, thr) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    k = int(np.sum(s >= thr))
    return {"rate": k / s.size if s.size else None, "k": k, "n": int(s.size), "ci95": wilson(k, s.size)}


def summarise_variant(scores: ScoreSet, variant: str, rec: str, operating_fmr: float, attacks=()) -> dict:
    """All metric families of one (variant, recogniser) against the unprotected baseline on the same pairs."""
    og, oi = scores.get(ORIGINAL, "genuine", rec), scores.get(ORIGINAL, "impostor", rec)
    g, i = scores.get(variant, "genuine", rec), scores.get(variant, "impostor", rec)
    out: dict = {"utility": {"original": verification(og, oi), "protected": verification(g, i)}}

    # Anonymity: thresholds set on the CLEAN impostor distribution.
    clean_thr = {fmt_rate(f): fmr_threshold(oi, f) for f in PSR_FMRS} if oi.size else {}
    same, other = scores.get(variant, "orig_prot_same", rec), scores.get(variant, "orig_prot_other", rec)
    psr = {k: (float(np.mean(same < t)) if same.size else None) for k, t in clean_thr.items()}
    psr["other_image"] = {k: (float(np.mean(other < t)) if other.size else None) for k, t in clean_thr.items()}
    psr["original_baseline_other_image"] = {k: (float(np.mean(og < t)) if og.size else None) for k, t in clean_thr.items()}
    psr["thresholds"] = clean_thr
    psr["mean_similarity"] = {"same_image": float(same.mean()) if same.size else None,
                              "other_image": float(other.mean()) if other.size else None,
                              "original_genuine": float(og.mean()) if og.size else None}
    psr["n_same"], psr["n_other"], psr["n_clean_impostor"] = int(same.size), int(other.size), int(oi.size)
    out["psr"] = psr

    # Revocability and stolen key: the protected system's operating threshold (its own impostors).
    op_thr = fmr_threshold(i, operating_fmr) if i.size else None
    mated = scores.get(variant, "mated", rec)
    if op_thr is not None:
        r_m, r_i, r_g = _rate(mated, op_thr), _rate(i, op_thr), _rate(g, op_thr)
        out["revocability"] = {"match_rate": r_m["rate"], "far": r_i["rate"], "same_key_match_rate": r_g["rate"],
                               "match_rate_ci95": r_m["ci95"], "far_ci95": r_i["ci95"],
                               "operating_fmr": fmt_rate(operating_fmr), "threshold": op_thr,
                               "n_mated": r_m["n"], "n_impostor": r_i["n"],
                               "original_baseline_match_rate": match_rate(og, fmr_threshold(oi, operating_fmr)) if oi.size else None,
                               # revocable when the k1-vs-k2 match rate cannot be told from the FAR (95% intervals overlap)
                               "indistinguishable_from_far": bool(r_m["n"] and r_i["n"] and r_m["ci95"][0] <= r_i["ci95"][1]
                                                                  and r_i["ci95"][0] <= r_m["ci95"][1])}
        stolen = scores.get(variant, "stolen_key", rec)
        r_s = _rate(stolen, op_thr)
        out["stolen_key"] = {"far": r_s["rate"], "far_ci95": r_s["ci95"], "impostor_far": r_i["rate"],
                             "n": r_s["n"], "threshold": op_thr, "operating_fmr": fmt_rate(operating_fmr)}
    else:
        out["revocability"] = {"match_rate": None, "far": None}
        out["stolen_key"] = {"far": None}

    nm = scores.get(variant, "nonmated", rec)
    out["unlinkability"] = ({**unl.dsys(mated, nm).to_dict()} if mated.size and nm.size else {"dsys": None})
    out["unlinkability"]["original_baseline_dsys"] = unl.dsys(og, oi).dsys if og.size and oi.size else None

    irr = {}
    t3 = clean_thr.get(fmt_rate(1e-3))
    for a in attacks:
        s = scores.get(variant, f"attack:{a}", rec)
        irr[a] = {"success_rate": match_rate(s, t3) if s.size and t3 is not None else None,
                  "success_rate_1e-2": match_rate(s, clean_thr["1e-2"]) if s.size and clean_thr else None,
                  "mean_similarity": float(s.mean()) if s.size else None, "n": int(s.size),
                  "threshold": t3, "fmr": "1e-3"}
    out["irreversibility"] = irr
    return out


def summarise(scores: ScoreSet, recognisers: list[str], white_box: list[str], variants: list[str],
              main_variant: str, operating_fmr: float = 1e-2, attacks=(), extra: dict | None = None,
              config_hash: str = "", seed: int = 0, counts: dict | None = None) -> dict:
    """The metrics.json dict: top-level ``recognisers`` = the main variant; every variant under ``variants``."""
    per_variant = {}
    for v in variants:
        per_variant[v] = {}
        for rec in recognisers:
            if not scores.has(v, "genuine", rec) and not scores.has(v, "orig_prot_same", rec):
                continue
            per_variant[v][rec] = {"white_box": rec in white_box,
                                   **summarise_variant(scores, v, rec, operating_fmr, attacks if v == main_variant else ())}
    metrics = {"config_hash": config_hash, "seed": seed, "counts": counts or {},
               "main_variant": main_variant, "operating_fmr": fmt_rate(operating_fmr),
               "recognisers": per_variant.get(main_variant, {}), "variants": per_variant}
    if extra:
        metrics.update(extra)
    return metrics


# --- plots ---------------------------------------------------------------------------------------------
def _plt():
    # matplotlib only when plots are drawn: heavy to import, and the Agg backend must be chosen first
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _roc_points(genuine, impostor):
    """(FAR, TAR) for every threshold, from sorted scores (exact, no interpolation)."""
    g, i = np.sort(np.asarray(genuine)), np.sort(np.asarray(impostor))
    thr = np.unique(np.concatenate([g, i]))[::-1]
    far = 1 - np.searchsorted(i, thr, side="left") / i.size
    tar = 1 - np.searchsorted(g, thr, side="left") / g.size
    return far, tar


def plot_roc_det(scores: ScoreSet, rec: str, variants: list[str], roc_path, det_path) -> None:
    plt = _plt()
    fig1, ax1 = plt.subplots(figsize=(5, 4))
    fig2, ax2 = plt.subplots(figsize=(5, 4))
    for v in [ORIGINAL] + [v for v in variants if v != ORIGINAL]:
        g, i = scores.get(v, "genuine", rec), scores.get(v, "impostor", rec)
        if not g.size or not i.size:
            continue
        far, tar = _roc_points(g, i)
        floor = 0.5 / i.size
        ax1.plot(np.maximum(far, floor), tar, label=v, lw=1.2)
        ax2.plot(np.maximum(far, floor), np.maximum(1 - tar, 0.5 / g.size), label=v, lw=1.2)
    ax1.set_xscale("log"); ax1.set_xlabel("FAR"); ax1.set_ylabel("TAR"); ax1.set_title(f"ROC ({rec})", fontsize=9)
    ax2.set_xscale("log"); ax2.set_yscale("log"); ax2.set_xlabel("FMR"); ax2.set_ylabel("FNMR")
    ax2.set_title(f"DET ({rec})", fontsize=9)
    for fig, ax, path in ((fig1, ax1, roc_path), (fig2, ax2, det_path)):
        ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=7)
        fig.tight_layout(); fig.savefig(path, dpi=100); plt.close(fig)


HIST_KINDS = [("genuine", "genuine (same key)"), ("impostor", "impostor"), ("mated", "mated (k1 vs k2)"),
              ("nonmated", "non-mated"), ("orig_prot_same", "original vs protected"),
              ("stolen_key", "stolen key")]


def plot_histograms(scores: ScoreSet, rec: str, variant: str, path, thresholds: dict | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = HIST_KINDS + [(k, k) for k in scores.kinds(variant) if k.startswith("attack:")]
    alls = [scores.get(variant, k, rec) for k, _ in kinds] + [scores.get(ORIGINAL, "genuine", rec),
                                                               scores.get(ORIGINAL, "impostor", rec)]
    alls = [a for a in alls if a.size]
    if not alls:
        plt.close(fig); return
    lo, hi = min(a.min() for a in alls), max(a.max() for a in alls)
    bins = np.linspace(lo, hi + 1e-9, 41)
    for k, label in kinds:
        s = scores.get(variant, k, rec)
        if s.size:
            ax.hist(s, bins=bins, density=True, histtype="step", lw=1.3, label=f"{label} (n={s.size})")
    for k, label in (("genuine", "original genuine"), ("impostor", "original impostor")):
        s = scores.get(ORIGINAL, k, rec)
        if s.size and variant != ORIGINAL:
            ax.hist(s, bins=bins, density=True, histtype="stepfilled", alpha=0.15, label=f"{label} (n={s.size})")
    for name, t in (thresholds or {}).items():
        ax.axvline(t, ls="--", lw=0.8, color="grey")
        ax.text(t, ax.get_ylim()[1] * 0.95, name, fontsize=6, rotation=90, va="top")
    ax.set_xlabel("cosine similarity"); ax.set_ylabel("density")
    ax.set_title(f"score distributions: {variant} ({rec})", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout(); fig.savefig(path, dpi=100); plt.close(fig)


def plot_grid(rows: list[dict], path, col_titles: list[str]) -> None:
    """rows: {"label": str, "images": [HxWx3 uint8, ...]} (None = blank cell)."""
    plt = _plt()
    if not rows:
        return
    ncol = len(col_titles)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.6 * ncol, 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            img = row["images"][c] if c < len(row["images"]) else None
            if img is not None:
                ax.imshow(img)
            if r == 0:
                ax.set_title(col_titles[c], fontsize=7)
        axes[r][0].text(-0.05, 0.5, row["label"], fontsize=6, rotation=90, va="center", ha="right",
                        transform=axes[r][0].transAxes)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


# --- tables --------------------------------------------------------------------------------------------
def _f(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report; rendered both to markdown and HTML."""
    out = []
    var = metrics.get("variants", {})
    recs = list(dict.fromkeys(r for v in var.values() for r in v))
    # 1. utility
    rows = []
    for rec in recs:
        first = True
        for v, per in var.items():
            if rec not in per:
                continue
            u = per[rec]["utility"]
            if first:
                o = u["original"]
                rows.append([rec + (" (white-box)" if per[rec]["white_box"] else ""), ORIGINAL, _f(o.get("eer")), _f(o.get("auc")),
                             _f(o.get("tar", {}).get("1e-1")), _f(o.get("tar", {}).get("1e-2")), _f(o.get("tar", {}).get("1e-3")),
                             _f(o.get("tar", {}).get("1e-4")), _acc(o), f"{o['n_genuine']}/{o['n_impostor']}"])
                first = False
            p = u["protected"]
            if v == ORIGINAL:
                continue
            rows.append(["", v, _f(p.get("eer")), _f(p.get("auc")), _f(p.get("tar", {}).get("1e-1")),
                         _f(p.get("tar", {}).get("1e-2")), _f(p.get("tar", {}).get("1e-3")),
                         _f(p.get("tar", {}).get("1e-4")), _acc(p), f"{p['n_genuine']}/{p['n_impostor']}"])
    out.append(("1. Utility (genuine: same person, same key, different images; impostor: different people, own keys)",
                ["recogniser", "variant", "EER", "AUC", "TAR@1e-1", "TAR@1e-2", "TAR@1e-3", "TAR@1e-4", "10-fold acc (balanced)",
                 "pairs gen/imp"], rows))
    # 2. PSR
    rows = []
    for rec in recs:
        for v, per in var.items():
            if rec not in per or v == ORIGINAL:
                continue
            p = per[rec]["psr"]
            rows.append([rec, v, _pct(p.get("1e-2")), _pct(p.get("1e-3")), _pct(p["other_image"].get("1e-2")),
                         _pct(p["other_image"].get("1e-3")), _pct(p["original_baseline_other_image"].get("1e-3")),
                         _f(p["mean_similarity"]["same_image"]), _f(p["mean_similarity"]["other_image"]),
                         f"{p['n_same']}/{p['n_other']}"])
    out.append(("2. Anonymity: protection success rate (score below the clean-impostor threshold at FMR)",
                ["recogniser", "variant", "PSR@1e-2 same img", "PSR@1e-3 same img", "PSR@1e-2 other img",
                 "PSR@1e-3 other img", "unprotected other img (=FNMR@1e-3)", "mean sim same", "mean sim other",
                 "pairs same/other"], rows))
    # 3. revocability + 8. stolen key
    rows = []
    for rec in recs:
        for v, per in var.items():
            if rec not in per or v == ORIGINAL:
                continue
            r, s = per[rec]["revocability"], per[rec]["stolen_key"]
            rows.append([rec, v, r.get("operating_fmr", "n/a"), _pct(r.get("same_key_match_rate")), _pct(r.get("match_rate")),
                         _ci(r.get("match_rate_ci95")), _pct(r.get("far")), _ci(r.get("far_ci95")),
                         _pct(s.get("far")), _ci(s.get("far_ci95")),
                         f"{r.get('n_mated', 0)}/{r.get('n_impostor', 0)}/{s.get('n', 0)}"])
    out.append(("3+8. Revocability (old key k1 vs new key k2, same person) and stolen key (impostor protected with "
                "the victim's key), at the protected system's operating threshold",
                ["recogniser", "variant", "op. FMR", "same-key match", "k1-vs-k2 match", "95% CI", "impostor FAR",
                 "95% CI", "stolen-key FAR", "95% CI", "pairs mated/imp/stolen"], rows))
    # 4. unlinkability
    rows = []
    for rec in recs:
        for v, per in var.items():
            if rec not in per or v == ORIGINAL:
                continue
            u = per[rec]["unlinkability"]
            rows.append([rec, v, _f(u.get("dsys")), _f(u.get("original_baseline_dsys")),
                         f"{u.get('n_mated', 0)}/{u.get('n_nonmated', 0)}", str(u.get("n_bins", "n/a"))])
    out.append(("4. Unlinkability: D<->sys (0 = unlinkable, 1 = fully linkable; omega = 1)",
                ["recogniser", "variant", "D<->sys", "unprotected (genuine vs impostor)", "pairs mated/non-mated",
                 "bins"], rows))
    # 5. irreversibility
    rows = []
    main = metrics.get("main_variant")
    for rec in recs:
        per = var.get(main, {}).get(rec)
        if not per:
            continue
        for a, r in per["irreversibility"].items():
            if a.startswith("linkage"):   # table 9
                continue
            rows.append([rec, main, a, _pct(r.get("success_rate")), _pct(r.get("success_rate_1e-2")),
                         _f(r.get("mean_similarity")), str(r.get("n"))])
        recon = var.get("reconstruction", {}).get(rec)
        if recon:
            p = recon["psr"]
            rows.append([rec, "reconstruction (no protection, control)", "-",
                         _pct(None if p.get("1e-3") is None else 1 - p["1e-3"]),
                         _pct(None if p.get("1e-2") is None else 1 - p["1e-2"]),
                         _f(p["mean_similarity"]["same_image"]), str(p["n_same"])])
    out.append(("5. Irreversibility attacks: attack output matched to the original at the clean threshold",
                ["recogniser", "variant", "attack", "success@1e-3", "success@1e-2", "mean sim", "pairs"], rows))
    # 6-7. quality and attributes
    q = metrics.get("quality", {})
    rows = [[k, _f(val, 3) if isinstance(val, float) or val is None else str(val)] for k, val in _flatten(q)]
    out.append(("6. Image quality / realism", ["measure", "value"], rows))
    a = metrics.get("attributes", {})
    rows = [[k, _f(val, 3) if isinstance(val, float) or val is None else str(val)] for k, val in _flatten(a)]
    out.append(("7. Attribute preservation (original vs protected)", ["measure", "value"], rows))
    # 9. linkage attack (learned, FaceLinkGen protocol)
    lk = metrics.get("linkage")
    if lk:
        rows = []
        for v, per in lk.get("variants", {}).items():
            for kind in ("linkage", "linkage_feature"):
                for setting, by_n in per.get(kind, {}).items():
                    for n, r in by_n.items():
                        rows.append([v, "student" if kind == "linkage" else "feature (ridge)", setting, str(n),
                                     _pct(r.get("top1_before")), _pct(r.get("top1_after")), _pct(r.get("top5_after")),
                                     _pct(r.get("top1_clean")), _pct(r.get("chance")),
                                     f"{r.get('n_queries')}/{r.get('n_gallery_identities')}"])
        info = lk.get("info", {})
        out.append((f"9. Linkage attack (learned; teacher {info.get('teacher')}, student init {info.get('student')}): "
                    "protected image as query against a clean gallery of the test people's other photos",
                    ["variant", "attack", "key setting", "attacker pairs N", "Top-1 before", "Top-1 after",
                     "Top-5 after", "Top-1 clean ceiling", "chance", "queries/gallery ids"], rows))
    sb = metrics.get("soft_biometrics")
    if sb:
        rows = []
        for label, r in [("two original photos, same person", sb["original_same_person"]),
                         ("originals of two different people", sb["original_other_person"])] + \
                [(f"original vs {v}", r) for v, r in sb.get("variants", {}).items()]:
            rows.append([label, _pct(r.get("gender_agreement")), _f(r.get("age_abs_diff"), 1),
                         _pct(r.get("age_agreement")), str(r.get("n"))])
        out.append((f"10. Soft-biometric leakage (faceplugin SSR-Net gender/age; age agrees when within "
                    f"{sb.get('age_tolerance_years')} years)",
                    ["pair", "gender agreement", "mean |age diff| (years)", "age agreement", "pairs"], rows))
    return out


def add_linkage(metrics: dict, res: dict, teacher: str) -> None:
    """Put the linkage attack's results (eval/linkage.run) into metrics: ``variants.<v>.<teacher>.irreversibility.
    linkage|linkage_feature`` (so ``recognisers.<teacher>...`` for the main variant) and a top-level ``linkage``."""
    metrics["linkage"] = {"info": res.get("_info", {}),
                          "variants": {v: r for v, r in res.items() if not v.startswith("_")}}
    for v, r in metrics["linkage"]["variants"].items():
        per = metrics.get("variants", {}).get(v, {}).get(teacher)
        if per is not None:
            per.setdefault("irreversibility", {}).update({"linkage": r["linkage"], "linkage_feature": r["linkage_feature"]})


def plot_linkage(metrics: dict, path) -> bool:
    """Bar chart: Top-1 before / after (student, feature) / clean / chance per variant and key setting, at the
    largest attacker set. False when there is nothing to draw."""
    lk = metrics.get("linkage", {}).get("variants", {})
    bars = []
    for v, per in lk.items():
        for setting, by_n in per.get("linkage", {}).items():
            if not by_n:
                continue
            n = max(by_n, key=lambda k: int(k))
            r, f = by_n[n], per.get("linkage_feature", {}).get(setting, {}).get(n, {})
            bars.append((f"{v}\n{setting}\nN={n}", r.get("top1_before"), r.get("top1_after"), f.get("top1_after"),
                         r.get("top1_clean"), r.get("chance")))
    if not bars:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bars)), 3.6))
    labels = ["before", "after (student)", "after (feature)", "clean ceiling", "chance"]
    w = 0.16
    for j, lab in enumerate(labels):
        ax.bar([i + (j - 2) * w for i in range(len(bars))], [b[1 + j] or 0.0 for b in bars], w, label=lab)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax.set_ylabel("Top-1 linkage")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _acc(v: dict) -> str:
    a = v.get("accuracy_10fold")
    if isinstance(a, dict):
        return f"{a['mean']:.3f}±{a['std']:.3f}"
    return _f(a)


def _ci(ci) -> str:
    return "n/a" if not ci or any(c is None or math.isnan(c) for c in ci) else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _flatten(d, prefix=""):
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _clean_json(o):
    """NaN -> null so metrics.json is strict JSON."""
    if isinstance(o, dict):
        return {k: _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(float(o)):
        return None
    return o


# --- the report ------------------------------------------------------------------------------------------
def write_report(out_dir, metrics: dict, scores: ScoreSet, grid_rows: list[dict] | None = None,
                 grid_cols: list[str] | None = None, config: dict | None = None, notes: list[str] | None = None,
                 command: str = "") -> dict[str, Path]:
    """Write report.md, report.html, metrics.json, scores.csv and plots/ into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "scores": out / "scores.csv", "md": out / "report.md",
             "html": out / "report.html"}
    paths["metrics"].write_text(json.dumps(_clean_json(metrics), indent=1, default=_json_default))
    scores.to_csv(paths["scores"])

    figures: list[tuple[str, Path]] = []
    main = metrics.get("main_variant")
    variants = [v for v in metrics.get("variants", {}) if v != ORIGINAL]
    if grid_rows:
        gp = plots / "grid.png"
        plot_grid(grid_rows, gp, grid_cols or [])
        figures.append(("Original | protected with key 1 (two images of the person) | protected with key 2", gp))
    for rec in scores.recognisers():
        rp, dp = plots / f"roc_{_safe(rec)}.png", plots / f"det_{_safe(rec)}.png"
        plot_roc_det(scores, rec, variants, rp, dp)
        figures += [(f"ROC, {rec}", rp), (f"DET, {rec}", dp)]
        for v in variants:
            m = metrics["variants"].get(v, {}).get(rec)
            if m is None:
                continue
            thr = {f"clean FMR {k}": t for k, t in m["psr"].get("thresholds", {}).items()}
            if m["revocability"].get("threshold") is not None:
                thr[f"operating (protected FMR {m['revocability']['operating_fmr']})"] = m["revocability"]["threshold"]
            hp = plots / f"hist_{_safe(rec)}_{_safe(v)}.png"
            plot_histograms(scores, rec, v, hp, thr)
            figures.append((f"Score histograms, {v}, {rec}", hp))
            mated, nm = scores.get(v, "mated", rec), scores.get(v, "nonmated", rec)
            if mated.size and nm.size and (v == main or len(variants) <= 6):
                up = plots / f"unlink_{_safe(rec)}_{_safe(v)}.png"
                unl.plot(unl.dsys(mated, nm), up, title=f"{v}, {rec}")
                figures.append((f"Unlinkability (mated vs non-mated densities, D<->(s)), {v}, {rec}", up))

    lp = plots / "linkage.png"
    if plot_linkage(metrics, lp):
        figures.append(("Linkage attack: Top-1 before / after the attack, clean ceiling and chance", lp))
    tabs = tables(metrics)
    head = ["# FaceAnonyMixer evaluation report", "",
            f"- config hash: `{metrics.get('config_hash')}`, seed: {metrics.get('seed')} (pair sampling and keys)",
            f"- main variant: `{main}`; operating FMR for revocability / stolen key: {metrics.get('operating_fmr')}",
            "- counts: " + ", ".join(f"{k}={v}" for k, v in metrics.get("counts", {}).items())]
    if command:
        head.append(f"- command: `{command}`")
    head += [f"- {n}" for n in (notes or [])]
    md = head + [""]
    for title, header, rows in tabs:
        md += [f"## {title}", "", _md_table(header, rows) if rows else "_not measured_", ""]
    md += ["## Figures", ""]
    md += [f"![{cap}](plots/{p.name})\n\n*{cap}*\n" for cap, p in figures]
    md += ["## Recomputing", "", "Every raw score is in `scores.csv` (variant, kind, item_a, item_b, recogniser, "
           "score); the protocol and formulas are in docs/evaluation.md.", ""]
    if config is not None:
        md += ["## Configuration", "", "```json", json.dumps(config, indent=1, default=str), "```", ""]
    paths["md"].write_text("\n".join(md))

    body = ["<h1>FaceAnonyMixer evaluation report</h1><ul>"]
    body += [f"<li>{html.escape(line[2:])}</li>" for line in head[2:]] + ["</ul>"]
    for title, header, rows in tabs:
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows) if rows else "<p><i>not measured</i></p>"]
    body.append("<h2>Figures</h2>")
    for cap, p in figures:
        b64 = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    body.append("<h2>Recomputing</h2><p>Every raw score is in <code>scores.csv</code>; see docs/evaluation.md.</p>")
    if config is not None:
        body.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=1, default=str)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px;"
             "margin-bottom:1em}td,th{border:1px solid #bbb;padding:2px 6px}th{background:#eee}"
             "figure{display:inline-block;margin:6px}img{max-width:560px}figcaption{font-size:11px}")
    paths["html"].write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>faceanonymixer evaluation"
                             f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    return paths


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)
