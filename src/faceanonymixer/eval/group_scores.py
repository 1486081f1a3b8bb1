"""Per-group measures of ``faceanonymixer evaluate`` (``groups: utkface|CSV`` in the config): where the data set
has identities, the protected system's TAR and FAR, the stolen-key accept rate and the PSR of each group, and the
face-found rate, each with its count and Wilson interval; gaps as in the NIST demographic reports (each group's
false non-match and false match rate over the best group's). Labels, intervals and presentation: eval/groups.py.

Thresholds are global, as a deployed system has one: TAR, FAR and stolen key at the protected system's threshold
at ``operating_fmr`` over all its impostor pairs; PSR at the clean system's threshold at the same FMR. A pair
counts for a group when both its images belong to it (a stolen-key pair: the victim's image). Pairs share images,
so the Wilson intervals of pair rates are narrower than the data warrant; treat them as a lower bound."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import torch

from . import groups as G
from .dataset import Dataset, Pairs
from .metrics import threshold_at_far


def face_found(labels: G.GroupLabels, groupings: list[str], items: list[str], ok: list[bool]) -> dict:
    """grouping -> group -> {'face_found': proportion} over every selected image (before images without a face
    were dropped)."""
    lab = [labels.of(it) for it in items]
    ok = np.asarray(ok, dtype=bool)
    return {gp: {g: {"face_found": G.proportion(int(ok[idx].sum()), len(idx))}
                 for g, idx in G.members(lab, gp).items()} for gp in groupings}


def _rate(mask: np.ndarray, hits: np.ndarray) -> dict:
    return G.proportion(int(hits[mask].sum()), int(mask.sum()))


def identity_measures(labels: G.GroupLabels, groupings: list[str], ds: Dataset, pairs: Pairs, rec: str,
                      e_orig: torch.Tensor,        # [n,D] clean embeddings (ArcFace crops)
                      e_k1: torch.Tensor,          # [n,D] protected with the person's key
                      e_stolen: torch.Tensor,      # [S',D] impostors' images protected with victims' keys
                      stolen_row: np.ndarray,      # [S] row of e_stolen for each stolen pair
                      operating_fmr: float, tables: dict) -> dict:
    """Adds tar[rec], far[rec], stolen_key_accept[rec], psr[rec] to tables[grouping][group]; returns the
    thresholds used."""
    eo, e1, es = (t.double().numpy() for t in (e_orig, e_k1, e_stolen))
    g, i = pairs.genuine, pairs.impostor
    s_gen = (e1[g[:, 0]] * e1[g[:, 1]]).sum(1)
    s_imp = (e1[i[:, 0]] * e1[i[:, 1]]).sum(1)
    s_clean_imp = (eo[i[:, 0]] * eo[i[:, 1]]).sum(1)
    s_self = (eo * e1).sum(1)
    st = pairs.stolen
    s_st = (e1[st[:, 0]] * es[np.asarray(stolen_row, dtype=np.int64)]).sum(1) if len(st) else np.zeros(0)
    t_prot = threshold_at_far(s_imp, operating_fmr)
    t_clean = threshold_at_far(s_clean_imp, operating_fmr)
    lab = [labels.of(it) for it in ds.items]
    for gp in groupings:
        grp_of = np.array([(x or {}).get(gp) for x in lab], dtype=object)
        for grp in sorted({v for v in grp_of if v is not None}):
            inside = grp_of == grp
            row = tables.setdefault(gp, {}).setdefault(grp, {})
            row[f"tar[{rec}]"] = _rate(inside[g[:, 0]] & inside[g[:, 1]], s_gen >= t_prot)
            row[f"far[{rec}]"] = _rate(inside[i[:, 0]] & inside[i[:, 1]], s_imp >= t_prot)
            row[f"stolen_key_accept[{rec}]"] = (_rate(inside[st[:, 0]], s_st >= t_prot) if len(st)
                                                else G.proportion(0, 0))
            row[f"psr[{rec}]"] = _rate(inside, s_self < t_clean)
    return {"protected": t_prot, "clean": t_clean, "operating_fmr": operating_fmr}


def finish(tables: dict, labels: G.GroupLabels, variant: str, thresholds: dict,
           out_dir: Path) -> tuple[dict, str, str]:
    """-> (metrics['groups_info']: labels, thresholds, gaps; Markdown for report.md; HTML for report.html);
    writes plots/groups.png. The tables themselves go to metrics['groups'][grouping][group][measure]."""
    (Path(out_dir) / "plots").mkdir(parents=True, exist_ok=True)
    gaps = {gp: G.gaps(t) for gp, t in tables.items()}
    plot = G.plot_groups(tables, Path(out_dir) / "plots" / "groups.png", f"per group, {variant}")
    md = ["## Per group", "",
          f"Variant `{variant}`; labels: {labels.source} ({len(labels.labels)} labelled, {len(labels.bad)} names "
          "without labels). Thresholds global (protected system at the operating FMR for TAR / FAR / stolen key, "
          "clean system for PSR); a pair counts for a group when both images belong to it. value [95 % Wilson "
          "interval] (count).", ""]
    for gp, t in tables.items():
        md += [f"### {gp}", "", G.table_markdown(t), ""]
        md += [f"- {s}" for s in G.gaps_lines(gp, gaps[gp])] + [""]
    if plot:
        md += [f"![per group](plots/{plot.name})", ""]
    body = [f"<h2>Per group</h2><p>{html.escape(md[2])}</p>"]
    for gp, t in tables.items():
        body += [f"<h3>{html.escape(gp)}</h3>", G.table_html(t),
                 "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in G.gaps_lines(gp, gaps[gp])) + "</ul>"]
    if plot:
        body.append(f'<figure><img alt="per group" src="data:image/png;base64,'
                    f'{base64.b64encode(plot.read_bytes()).decode()}"><figcaption>per group</figcaption></figure>')
    section = {"variant": variant, "labels": labels.summary(), "thresholds": thresholds, "gaps": gaps,
               "measures": {m: G.DESCRIPTIONS[m] for m in ("face_found", "tar", "far", "stolen_key_accept", "psr")}}
    return section, "\n".join(md), "".join(body)
