"""Groups of people as data, and per-group measures with their intervals: does the protection treat everyone alike?

* Labels: UTKFace's file names (``age_gender_race_*``: race 0-4 = White, Black, Asian, Indian, Others; gender 0 male,
  1 female; age in years) give the groupings ``race``, ``gender``, ``age`` (under 13, 13-64, 65 and over) and
  ``cohort`` (the race groups of the 13-64-year-olds, plus 'under 13' and '65 and over'); any other data set names
  its groups in a CSV ``image,<grouping>[,<grouping>...]`` (header row; image = the file name or its path relative
  to the data folder). Names that do not parse are listed with the reason, never fatal.
* A manifest CSV (``file[,split]``) restricts the photos to the listed ones (and to one split).
* Intervals (95 %): Wilson for proportions (k of n), a seeded percentile bootstrap for means, margins and
  Fréchet distances. Every measure is ``{'value', 'n', 'lo', 'hi', 'interval'}`` (``value`` None + ``reason``
  when there is nothing to measure).
* Gaps: per measure the best and the worst group and, for error rates, worst / best (as the NIST demographic
  reports give false non-match and false match rates relative to the best group); for means the difference.
* ``table_markdown`` and ``plot_groups`` (a dot per group with its interval, one panel per measure) present them.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FaceAnonyMixerError

Z95 = 1.959963984540054
RACES = ("White", "Black", "Asian", "Indian", "Others")     # UTKFace race codes 0-4
GENDERS = ("male", "female")                               # UTKFace gender codes 0-1
AGE_BANDS = ("under 13", "13-64", "65 and over")
UTK_GROUPINGS = ("cohort", "race", "gender", "age")
_UTK = re.compile(r"^(\d{1,3})_(\d+)_(\d+)_")


class GroupsError(FaceAnonyMixerError):
    """A group-label file or manifest that cannot be used."""


def age_band(age: int) -> str:
    return AGE_BANDS[0] if age < 13 else AGE_BANDS[1] if age < 65 else AGE_BANDS[2]


def parse_utkface_name(name: str) -> dict[str, str]:
    """``'25_1_2_2017....jpg.chip.jpg'`` -> {'cohort': 'Asian 13-64', 'race': 'Asian', 'gender': 'female',
    'age': '13-64'}; raises ValueError naming what is wrong."""
    base = Path(name).name
    m = _UTK.match(base)
    if not m:
        raise ValueError("not age_gender_race_*")
    age, gender, race = (int(g) for g in m.groups())
    if not 0 <= age <= 130:
        raise ValueError(f"age {age} outside 0-130")
    if gender not in (0, 1):
        raise ValueError(f"gender code {gender} not 0 (male) or 1 (female)")
    if race not in range(len(RACES)):
        raise ValueError(f"race code {race} not 0-4")
    band = age_band(age)
    cohort = f"{RACES[race]} 13-64" if band == AGE_BANDS[1] else band
    return {"cohort": cohort, "race": RACES[race], "gender": GENDERS[gender], "age": band}


@dataclass
class GroupLabels:
    source: str                                          # 'utkface file names' or the CSV's path
    groupings: list[str]                                 # e.g. ['cohort', 'race', 'gender', 'age']
    labels: dict[str, dict[str, str]] = field(default_factory=dict)   # image key -> {grouping: group}
    bad: list[tuple[str, str]] = field(default_factory=list)          # (name, why it has no labels)

    def of(self, name: str) -> dict[str, str] | None:
        """Labels of an image given by its relative path (tried first), its file name, or (identity folders
        <person>/<file>) its person folder's name: a CSV may label people instead of images."""
        return (self.labels.get(name) or self.labels.get(Path(name).name)
                or (self.labels.get(name.split("/", 1)[0]) if "/" in name else None))

    def summary(self) -> dict:
        return {"source": self.source, "groupings": self.groupings, "n_labelled": len(self.labels),
                "n_bad": len(self.bad), "bad": [{"name": n, "why": w} for n, w in self.bad[:50]]}


def utkface_labels(names) -> GroupLabels:
    out = GroupLabels("utkface file names", list(UTK_GROUPINGS))
    for n in names:
        try:
            out.labels[str(n)] = parse_utkface_name(str(n))
        except ValueError as e:
            out.bad.append((str(n), str(e)))
    return out


def read_groups_csv(path) -> GroupLabels:
    """CSV with a header ``image,<grouping>[,<grouping>...]``; rows with a missing image or an empty group are
    listed as bad (an empty cell = no label in that grouping is allowed when another grouping has one)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise GroupsError(f"{path}: cannot read the groups CSV ({e}); give a UTF-8 file 'image,group[,group...]'")
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() not in ("image", "file", "path"):
        raise GroupsError(f"{path}: the first row must be a header 'image,<grouping>[,<grouping>...]' "
                          f"(e.g. 'image,race,gender'), got {rows[0] if rows else 'an empty file'}")
    groupings = [h.strip() for h in rows[0][1:]]
    if any(not g for g in groupings) or len(set(groupings)) != len(groupings):
        raise GroupsError(f"{path}: grouping names in the header must be non-empty and distinct, got {groupings}")
    out = GroupLabels(str(path), groupings)
    for k, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        img = row[0].strip()
        if not img:
            out.bad.append((f"line {k}", "no image name"))
            continue
        if len(row) != len(rows[0]):
            out.bad.append((img, f"line {k}: {len(row)} fields, the header has {len(rows[0])}"))
            continue
        lab = {g: c.strip() for g, c in zip(groupings, row[1:]) if c.strip()}
        if not lab:
            out.bad.append((img, f"line {k}: no group given"))
            continue
        if img in out.labels:
            out.bad.append((img, f"line {k}: listed twice (the first row is kept)"))
            continue
        out.labels[img] = lab
    return out


def load_labels(spec: str, names) -> GroupLabels:
    """``spec`` = 'utkface' (labels from ``names``' file names) or a groups CSV path."""
    if spec == "utkface":
        return utkface_labels(names)
    if not Path(spec).is_file():
        raise GroupsError(f"{spec}: groups must be 'utkface' or a CSV file image,group[,group...]; file not found")
    return read_groups_csv(spec)


def read_manifest(path, split: str | None = None) -> set[str]:
    """File names listed in a manifest CSV (column 'file'; with ``split``, only rows whose 'split' equals it)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rd = csv.DictReader(f)
            cols = rd.fieldnames or []
            if "file" not in cols or (split and "split" not in cols):
                raise GroupsError(f"{path}: a manifest needs a 'file' column{' and a split column' if split else ''}"
                                  f" (got {cols})")
            return {r["file"] for r in rd if not split or r["split"] == split}
    except OSError as e:
        raise GroupsError(f"{path}: cannot read the manifest ({e}); give a CSV with a 'file' column")


def select_per_group(keys: list[str], labels: GroupLabels, groupings: list[str], per_group: int,
                     seed: int = 0) -> list[str]:
    """Up to ``per_group`` images of every group of every listed grouping (seeded choice; images already chosen
    for another grouping count), in a stable order."""
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    chosen: dict[str, None] = {}
    for g in groupings:
        count: dict[str, int] = {}
        for k in chosen:
            grp = (labels.of(k) or {}).get(g)
            if grp is not None:
                count[grp] = count.get(grp, 0) + 1
        for k in order:
            grp = (labels.of(k) or {}).get(g)
            if grp is None or k in chosen or count.get(grp, 0) >= per_group:
                continue
            chosen[k] = None
            count[grp] = count.get(grp, 0) + 1
    return sorted(chosen)


def members(item_labels: list[dict | None], grouping: str) -> dict[str, np.ndarray]:
    """group -> item indices, groups in sorted order."""
    out: dict[str, list[int]] = {}
    for i, lab in enumerate(item_labels):
        g = (lab or {}).get(grouping)
        if g is not None:
            out.setdefault(g, []).append(i)
    return {g: np.asarray(out[g], dtype=np.int64) for g in sorted(out)}


# --- intervals ------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n > 0)."""
    if n <= 0:
        raise ValueError("wilson needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} outside 0..{n}")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (0.0 if k == 0 else max(0.0, c - h)), (1.0 if k == n else min(1.0, c + h))   # exact at the ends


def proportion(k: int, n: int) -> dict:
    if n == 0:
        return {"value": None, "n": 0, "reason": "no items in this group", "interval": "wilson"}
    lo, hi = wilson(int(k), int(n))
    return {"value": k / n, "k": int(k), "n": int(n), "lo": lo, "hi": hi, "interval": "wilson"}


def bootstrap(stat, n: int, n_boot: int = 1000, seed: int = 0, min_n: int = 2) -> dict:
    """Percentile bootstrap of ``stat(idx)`` (idx = indices into the n items, resampled with replacement)."""
    if n < min_n:
        return {"value": None, "n": int(n), "reason": f"needs >= {min_n} items, got {n}", "interval": "bootstrap"}
    value = float(stat(np.arange(n)))
    rng = np.random.default_rng(seed)
    reps = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not math.isfinite(value):
        return {"value": None, "n": int(n), "reason": f"not finite ({value})", "interval": "bootstrap"}
    lo, hi = (np.quantile(reps, [0.025, 0.975]).tolist() if reps.size else (value, value))
    return {"value": value, "n": int(n), "lo": float(lo), "hi": float(hi), "interval": "bootstrap",
            "n_boot": int(n_boot)}


def mean_ci(values, n_boot: int = 1000, seed: int = 0) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return bootstrap(lambda idx: v[idx].mean(), len(v), n_boot, seed, min_n=1)


# --- measures of a group -----------------------------------------------------------------------------------------
# name -> (kind, better): kind 'rate' (a proportion: gaps as error ratios) or 'mean' (gaps as differences)
MEASURES = {
    "face_found": ("rate", "high"),
    "recon_top1": ("rate", "high"), "recon_cos": ("mean", "high"), "identity_margin": ("mean", "high"),
    "recon_fd": ("mean", "low"), "protected_fd": ("mean", "low"),
    "psr": ("rate", "high"), "photo_spread_cos": ("mean", "low"), "key_spread_cos": ("mean", "low"),
    "key_match_rate": ("mean", "low"),
    "gender_agreement": ("rate", "high"), "age_agreement": ("rate", "high"),
    "tar": ("rate", "high"), "far": ("rate", "low"), "stolen_key_accept": ("rate", "low"),
}
DESCRIPTIONS = {
    "face_found": "share of the group's photos in which the detector found a face",
    "recon_top1": "the reconstruction's nearest photo among the group's photos is its own",
    "recon_cos": "mean cosine(photo, its reconstruction)",
    "identity_margin": "mean of cos(photo, reconstruction) - mean cos(photo, the group's other photos)",
    "recon_fd": "Fréchet distance of the reconstructions' embeddings to the group's real photos",
    "protected_fd": "Fréchet distance of the protected faces' embeddings to the group's real photos",
    "psr": "protection success: protected face below the operating threshold against its own photo",
    "photo_spread_cos": "mean cosine between different photos of the group (the reference for key_spread_cos)",
    "key_spread_cos": "mean cosine between protected faces of different photos under one key (stolen-key risk)",
    "key_match_rate": "share of such pairs at or above the operating threshold",
    "gender_agreement": "estimated gender of the protected face = that of the photo (SSR-Net)",
    "age_agreement": "estimated ages of photo and protected face within 10 years (SSR-Net)",
    "tar": "true accept rate of the protected system (genuine protected pairs) at the operating threshold",
    "far": "false accept rate of the protected system (impostor protected pairs) at the operating threshold",
    "stolen_key_accept": "an impostor's photo protected with the victim's key accepted as the victim",
}


def base_measure(name: str) -> str:
    return name.split("[", 1)[0]


def measure_order(names) -> list[str]:
    """Measures in the order of MEASURES (recogniser variants together), unknown ones last."""
    keys = list(MEASURES)
    return sorted(set(names), key=lambda m: (keys.index(base_measure(m)) if base_measure(m) in keys else len(keys), m))


def top1_rate(x: np.ndarray, y: np.ndarray) -> dict:
    """x[n,D] photos, y[n,D] their reconstructions (unit rows): share of i whose best photo for y_i is x_i."""
    if len(x) < 2:
        return proportion(0, 0) | {"reason": "needs >= 2 photos in the group"}
    sim = y @ x.T
    own = np.diag(sim)
    hits = int(((sim > own[:, None]).sum(1) == 0).sum())      # ties count for the own photo
    return proportion(hits, len(x))


def identity_margins(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per photo i: cos(x_i, y_i) - mean_{j != i} cos(x_i, x_j) (x, y unit rows [n,D], n >= 2)."""
    n = len(x)
    sxx = x @ x.T
    other = (sxx.sum(1) - np.diag(sxx)) / max(1, n - 1)
    return (x * y).sum(1) - other


def pair_spread(z: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per item i: mean cos(z_i, z_j) over j != i, and (with a threshold) the share of j with cos >= threshold."""
    n = len(z)
    s = z @ z.T
    off = ~np.eye(n, dtype=bool)
    mean = (s * off).sum(1) / max(1, n - 1)
    rate = None if threshold is None else ((s >= threshold) & off).sum(1) / max(1, n - 1)
    return mean, rate


def frechet_samples(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a[n,D] and b[m,D] (unbiased covariances), exact
    and fast when n, m << D: with Ca = A A^T, Cb = B B^T (A = centred a^T / sqrt(n-1)), tr sqrt(Ca Cb) is the sum
    of the singular values of A^T B (an n x m matrix), so no D x D square root is needed."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] and len(a) >= 2 and len(b) >= 2, (a.shape, b.shape)
    A = (a - a.mean(0)) / math.sqrt(len(a) - 1)
    B = (b - b.mean(0)) / math.sqrt(len(b) - 1)
    cross = np.linalg.svd(A @ B.T, compute_uv=False).sum()
    d = a.mean(0) - b.mean(0)
    return float(d @ d + (A * A).sum() + (B * B).sum() - 2.0 * cross)


def fd_ci(a: np.ndarray, ref: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict:
    """Fréchet distance of a[n,D] to ref[m,D] (paired resampling of both sides when n == m)."""
    if len(a) < 2 or len(ref) < 2:
        return {"value": None, "n": int(len(a)), "reason": "needs >= 2 faces on each side", "interval": "bootstrap"}
    paired = len(a) == len(ref)
    return bootstrap(lambda idx: frechet_samples(a[idx], ref[idx] if paired else ref), len(a), n_boot, seed)


# --- gaps, table, plot ----------------------------------------------------------------------------------------
def gaps(table: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """table[group][measure] -> per measure {best, worst, ..., ratio (error rates: worst/best) | difference}."""
    names = measure_order(m for g in table.values() for m in g)
    out = {}
    for m in names:
        kind, better = MEASURES.get(base_measure(m), ("mean", "high"))
        vals = {g: t[m]["value"] for g, t in table.items() if m in t and t[m].get("value") is not None}
        if len(vals) < 2:
            continue
        order = sorted(vals, key=lambda g: vals[g], reverse=(better == "high"))
        best, worst = order[0], order[-1]
        d = {"best": best, "best_value": vals[best], "worst": worst, "worst_value": vals[worst],
             "n_groups": len(vals)}
        if kind == "rate":
            err = {g: (1.0 - v if better == "high" else v) for g, v in vals.items()}
            d["error"] = "1 - value" if better == "high" else "value"
            d["ratio"] = (err[worst] / err[best]) if err[best] > 0 else None
            if d["ratio"] is None:
                d["reason"] = f"the best group ({best}) has no errors: a ratio is undefined"
            d["ratios"] = {g: (e / err[best] if err[best] > 0 else None) for g, e in err.items()}
        else:
            d["difference"] = abs(vals[worst] - vals[best])
        out[m] = d
    return out


def _cell(m: dict | None, pct: bool) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    ci = f" [{f(m['lo'])}, {f(m['hi'])}]" if "lo" in m else ""
    return f"{f(m['value'])}{ci} ({m['n']})"


def table_rows(table: dict[str, dict[str, dict]], measures: list[str] | None = None) -> tuple[list, list]:
    """(header, rows): one row per measure, one column per group: value [95 % interval] (count); rates in %."""
    measures = measures or measure_order(m for g in table.values() for m in g)
    groups = list(table)
    rows = []
    for m in measures:
        rate = MEASURES.get(base_measure(m), ("mean",))[0] == "rate"
        rows.append([f"{m}{' %' if rate else ''}"] + [_cell(table[g].get(m), rate) for g in groups])
    return ["measure"] + groups, rows


def table_markdown(table: dict[str, dict[str, dict]], measures: list[str] | None = None) -> str:
    header, rows = table_rows(table, measures)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table_html(table: dict[str, dict[str, dict]], measures: list[str] | None = None) -> str:
    import html
    header, rows = table_rows(table, measures)
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def gaps_lines(grouping: str, gp: dict[str, dict], ratios_only: bool = False) -> list[str]:
    """Summary lines: the worst/best ratio of each error rate, the difference of each mean (unless ratios_only)."""
    out = []
    for m, d in gp.items():
        if ratios_only and "ratio" not in d:
            continue
        if d["worst_value"] == d["best_value"]:
            out.append(f"{grouping}: {m}: every group {d['best_value']:.3f}")
        elif "ratio" in d:
            r = "undefined (best group without errors)" if d["ratio"] is None else f"{d['ratio']:.2f}x"
            out.append(f"{grouping}: {m}: worst {d['worst']} {d['worst_value']:.3f}, best {d['best']} "
                       f"{d['best_value']:.3f}; error ratio worst/best {r}")
        else:
            out.append(f"{grouping}: {m}: worst {d['worst']} {d['worst_value']:.3f}, best {d['best']} "
                       f"{d['best_value']:.3f}; difference {d['difference']:.3f}")
    return out


def plot_groups(tables: dict[str, dict[str, dict[str, dict]]], path, title: str = "") -> Path | None:
    """tables[grouping][group][measure] -> one PNG: a panel per measure, a dot per (grouping, group) with its 95 %
    interval. Returns the path, or None when there is nothing to draw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    measures = measure_order(m for t in tables.values() for g in t.values() for m, v in g.items()
                             if v.get("value") is not None)
    rows = [(gp, g) for gp, t in tables.items() for g in t]
    if not measures or not rows:
        return None
    ncol = min(4, len(measures))
    nrow = math.ceil(len(measures) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 0.6 + 0.28 * len(rows) * nrow + 0.6 * nrow),
                             squeeze=False, sharey=True)
    ypos = np.arange(len(rows))[::-1]
    labels = [f"{gp}: {g}" if len(tables) > 1 else g for gp, g in rows]
    for k, m in enumerate(measures):
        ax = axes[k // ncol][k % ncol]
        for y, (gp, g) in zip(ypos, rows):
            v = tables[gp][g].get(m)
            if not v or v.get("value") is None:
                continue
            lo, hi = v.get("lo", v["value"]), v.get("hi", v["value"])
            # a percentile bootstrap of a biased statistic (Fréchet distance) may leave the estimate outside
            ax.plot([lo, hi], [y, y], color="C0", lw=1.2)
            ax.errorbar([v["value"]], [y], xerr=[[max(0.0, v["value"] - lo)], [max(0.0, hi - v["value"])]], fmt="o", ms=4,
                        color="C0", ecolor="C0", capsize=2)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels, fontsize=7)
    for k in range(len(measures), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
