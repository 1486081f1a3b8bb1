"""How far a lone probe's optimised layers drift from the key code, per key-anchor weight (docs/method.md).

    python lab/probes/anchor_drift.py [--image FILE] [--anchors 0 1000 10000]

Protects one photo alone (plus its augmented copies, as `verify` does) with a fixed demo key under each
``loss.w_anchor`` and prints the mean squared drift of the optimised W+ layers from the key code and the SFace
cosine between the aligned original and the protected face. Default image: the first photo of the 4th held-out
('val') LFW person in ../shared/data/lfw/images. The key is a fixed public test key, never a real one."""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", help="photo of one face (default: an LFW held-out person)")
    ap.add_argument("--data", default="../shared/data/lfw/images")
    ap.add_argument("--anchors", type=float, nargs="+", default=[0.0, 1000.0, 10000.0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from faceanonymixer.keys import Key
    from faceanonymixer.pipeline import ProtectConfig, Protector
    torch.set_num_threads(a.threads)
    image = a.image
    if image is None:
        from faceanonymixer.train.data import list_people
        image = sorted(list_people(a.data, "val").items())[3][1][0]
    key = Key(bytes([7]) * 32)   # public test key
    for wa in a.anchors:
        cfg = ProtectConfig()
        cfg.loss.w_anchor = wa
        pr = Protector(cfg)
        t = time.perf_counter()
        r = pr.protect_people([[image]], key).results[0]
        band = list(pr.plan.optimised_layers)
        w_key = pr.key_code(key).cpu()
        x = pr.load_face(image)[0]
        cos = (pr.id_net.embed_ffhq(x) * pr.id_net.embed_ffhq(r.images.to(x.device))).sum().item()
        drift = (r.ws[:, band] - w_key[:, band]).pow(2).mean().item()
        print(f"w_anchor={wa:g}: drift {drift:.4f}, SFace cos(original, protected) {cos:.3f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
