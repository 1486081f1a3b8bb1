"""The Markdown page of the quality report (``model_report.md``) from its JSON data."""
from __future__ import annotations

from .generation import PSI


def _v(m: dict | None, pct: bool = False, digits: int = 3) -> str:
    if not m or "value" not in m:
        return "-"
    if m["value"] is None:
        return f"n/a ({one_line(m.get('reason', ''))})"[:200]
    v = m["value"]
    return f"{100 * v:.1f} %" if pct else f"{v:.{digits}f}"


def one_line(text) -> str:
    """A reason as one Markdown-table-safe line."""
    return " ".join(str(text).split()).replace("|", "/")


def _pass(m: dict | None) -> str:
    if not m or m.get("pass") is None:
        return ""
    return "yes" if m["pass"] else "**no**"


def markdown(d: dict) -> str:
    L = ["# Model report (embedded generator / encoder)", "",
         f"Measured with `{d['command']}` on {d['created']}.", ""]
    g = d.get("models", {}).get("generator", {})
    e = d.get("models", {}).get("encoder", {})
    if g.get("path"):
        meta = g.get("meta", {})
        trained = f", trained on {meta['trained_images']:,} images" if "trained_images" in meta else ""
        L.append(f"Generator `{g['path']}`: {g['resolution']} px, {g['num_ws']} W+ layers{trained}.  ")
    else:
        L.append(f"Generator: not available ({one_line(g.get('reason'))}).  ")
    L.append(f"Encoder: `{e['path']}`." if e.get("path") else f"Encoder: not available ({one_line(e.get('reason'))}).")
    rd = d.get("real_data")
    if rd:
        def ppl(k):
            return f"{k} person" if k == 1 else f"{k} people"
        L += ["", f"Real faces: held-out ('val') people of `{rd['root']}` ({ppl(rd['n_val_people'])}); set A "
                  f"{rd['set_a']['n_images']} faces of {ppl(rd['set_a']['n_people'])}, set B (disjoint people) "
                  f"{rd['set_b']['n_images']} faces of {ppl(rd['set_b']['n_people'])}."]
    L += ["", "| what | value | n | bar | pass |", "|---|---|---|---|---|"]
    S = d["sections"]

    def add(what, m, pct=False, digits=3):
        bar = (m or {}).get("bar", "")
        if bar and pct:
            op, thr = bar.split()
            bar = f"{op} {100 * float(thr):g} %"
        L.append(f"| {what} | {_v(m, pct, digits)} | {m.get('n', '') if m else ''} | {bar} | {_pass(m)} |")

    det = S.get("detection", {})
    if det.get("status") == "ok":
        add(f"samples (psi {PSI}) detected as a face", det["detection_rate"], pct=True)
    fd = S.get("fd_dlib", {})
    if fd.get("status") == "ok":
        names = {"generator": "FD-dlib: generator samples vs real A", "dcgan": "FD-dlib: DCGAN samples vs real A",
                 "real_floor": "FD-dlib: real B vs real A (floor)",
                 "real_at_generator_resolution": "FD-dlib: real B at generator resolution vs real A"}
        for k, label in names.items():
            add(label, fd["rows"].get(k), digits=4)
    enc = S.get("encoder", {})
    if enc.get("status") == "ok":
        add("encoder: reconstructions detected as a face", enc["recon_detection_rate"], pct=True)
        add("encoder: SFace cos(aligned original, reconstruction)", enc["sface_cos"])
        add("encoder: dlib cos(aligned original, reconstruction)", enc["dlib_cos"])
        if "faceplugin_cos" in enc:
            add("encoder: faceplugin-fr cos(aligned original, reconstruction) (in no loss)", enc["faceplugin_cos"])
        add(f"encoder: PSNR at {enc['resolution']} px (dB)", enc["psnr_db"], digits=2)
        add(f"encoder: SSIM at {enc['resolution']} px", enc["ssim"])
        add("context: SFace cos between two different people's originals", enc["context_sface_cos_other_person"])
        if "context_faceplugin_cos_other_person" in enc:
            add("context: faceplugin-fr cos between two different people's originals",
                enc["context_faceplugin_cos_other_person"])
    ref = S.get("encoder_refined", {})
    if ref.get("status") == "ok":
        tag = f"encoder + {ref['steps']}-step refinement (lr {ref['lr']:g})"
        add(f"{tag}: detected as a face", ref["recon_detection_rate"], pct=True)
        add(f"{tag}: SFace cos(original, reconstruction)", ref["sface_cos"])
        add(f"{tag}: dlib cos(original, reconstruction)", ref["dlib_cos"])
        if "faceplugin_cos" in ref:
            add(f"{tag}: faceplugin-fr cos(original, reconstruction)", ref["faceplugin_cos"])
        add(f"{tag}: PSNR at {ref['resolution']} px (dB)", ref["psnr_db"], digits=2)
        add(f"{tag}: SSIM at {ref['resolution']} px", ref["ssim"])
    mx = S.get("mixing", {})
    if mx.get("status") == "ok":
        L += ["", "Style mixing at psi 0.7: the listed W+ layers of each sample are replaced by another sample's w. "
                  "Bars for the identity band: SFace cos < 0.3 and landmark shift < 5 % of the inter-ocular "
                  "distance.", "",
              "| W+ layers replaced | role | SFace cos(original, mixed) | landmark shift / inter-ocular | "
              "n (cos / shift) | bars met |", "|---|---|---|---|---|---|"]
        seen = set()

        def mrow(layers, role, m, bars=""):
            L.append(f"| {layers} | {role} | {_v(m.get('sface_cos'))} | {_v(m.get('pose_change_iod'), pct=True)} | "
                     f"{m.get('sface_cos', {}).get('n', '')} / {m.get('pose_change_iod', {}).get('n', '')} | {bars} |")

        for name, c in mx["candidates"].items():
            if c.get("status") == "skipped":
                L.append(f"| {name} | candidate identity band: skipped ({one_line(c['reason'])}) | | | | |")
                continue
            band = " (the method's band)" if name == mx.get("method_identity_band") else ""
            mrow(name, f"candidate identity band{band}", c["middle"],
                 "" if c.get("pass") is None else ("yes" if c["pass"] else "**no**"))
        for name, c in mx["candidates"].items():
            for role in ("coarse", "fine"):
                b = c.get(role, {})
                if "sface_cos" in b and b["layers"] not in seen:
                    seen.add(b["layers"])
                    mrow(b["layers"], f"{role} (context)", b)
        u = mx["context_sface_cos_unrelated_samples"]
        pu = mx.get("context_pose_change_unrelated_samples")
        if pu is None:   # reports written before this row measured the shift
            L.append(f"| all | another sample altogether (reference) | {_v(u)} | | {u['n']} / | |")
        else:
            L.append(f"| all | another sample altogether (reference) | {_v(u)} | {_v(pu, pct=True)} | "
                     f"{u['n']} / {pu['n']} | |")
    skipped = [(k, v) for k, v in S.items() if v.get("status") != "ok"]
    if skipped:
        L += ["", "Not measured:", ""]
        L += [f"- **{k}** ({v['status']}): {one_line(v['reason'])}" for k, v in skipped]
    L += ["", "Definitions: samples are upscaled bicubically to 256 px before YuNet; landmark shift = mean displacement"
              " of the 5 landmarks in the generator frame / inter-ocular distance; FD-dlib = Fréchet distance of "
              "dlib-resnet embeddings (not an FID; compare rows of equal n); SSIM: " +
          enc.get("ssim_definition", "11x11 Gaussian window, sigma 1.5, per RGB channel") + "."]
    imgs = d.get("images", [])
    if imgs:
        L += [""] + [f"![{p[:-4]}]({p})" for p in imgs]
    return "\n".join(L) + "\n"
