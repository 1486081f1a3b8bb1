"""`faceanonymixer calibrate`: the threshold accepts at most the target share of impostors (known answers)."""
from __future__ import annotations

import csv
import json

import numpy as np

from faceanonymixer import cli
from faceanonymixer.eval import calibrate as ct


def test_threshold_at_far_known_answers():
    imp = np.arange(100) / 100.0                       # 0.00 .. 0.99
    t = ct.threshold_at_far(imp, 0.05)
    assert np.mean(imp >= t) == 0.05 and 0.94 < t <= 0.95 + 1e-12
    t0 = ct.threshold_at_far(imp, 0.0)
    assert np.mean(imp >= t0) == 0.0 and t0 > 0.99
    rng = np.random.default_rng(0)
    imp = rng.normal(size=10000)
    for far in (0.1, 0.01, 0.001):
        assert np.mean(imp >= ct.threshold_at_far(imp, far)) <= far


def test_command_reads_scores_csv(tmp_path, capsys):
    rows = [("method", "impostor", f"a{i}", f"b{i}", "sface", i / 1000) for i in range(1000)]
    rows += [("method", "genuine", f"g{i}", f"h{i}", "sface", 0.995 if i < 9 else 0.5) for i in range(10)]
    rows += [("method", "mated", f"m{i}", f"n{i}", "sface", 0.999 if i == 0 else 0.1) for i in range(10)]
    rows += [("naive", "impostor", "x", "y", "sface", 0.9)]
    p = tmp_path / "scores.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "kind", "item_a", "item_b", "recogniser", "score"])
        w.writerows(rows)
    assert cli.main(["calibrate", str(p), "--far", "0.01"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_impostor"] == 1000 and res["far"] == 0.01 and 0.989 <= res["threshold"] < 0.99
    assert res["tar"] == 0.9 and res["cross_key_accept"] == 0.1
    assert cli.main(["calibrate", str(p), "--variant", "blur"]) == 2   # no such scores: a message


def test_write_meta_reaches_verify(tmp_path, capsys):
    """--write-meta stores the threshold in the generator's JSON; load_generator reads it and verify_threshold
    prefers config > weights > 0.363."""
    import torch
    from faceanonymixer.models.io import save_model
    from faceanonymixer.models.loading import load_generator
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.workflow import verify_threshold
    torch.manual_seed(0)
    G = Generator(resolution=16, z_dim=16, w_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 8})
    weights = save_model(G, tmp_path / "g.safetensors", G.config, dict(kind="stylegan2"))
    assert load_generator(weights).verify_thresholds is None and verify_threshold(None, G, "sface") == 0.363
    rows = [("method", "impostor", f"a{i}", f"b{i}", "sface", i / 100) for i in range(100)]
    rows += [("method", "genuine", "g", "h", "sface", 0.999)]
    p = tmp_path / "scores.csv"
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows([("variant", "kind", "item_a", "item_b", "recogniser", "score")] + rows)
    assert cli.main(["calibrate", str(p), "--far", "0.01", "--write-meta", str(weights)]) == 0
    thr = json.loads(capsys.readouterr().out)["threshold"]
    G2 = load_generator(weights)
    assert G2.verify_thresholds == {"sface": thr} and 0.98 <= thr < 1
    assert verify_threshold(None, G2, "sface") == thr                  # the weights' calibrated value
    assert verify_threshold(0.5, G2, "sface") == 0.5                   # the config wins
    assert verify_threshold(None, G2, "dlib-resnet") == 0.363          # not calibrated for that matcher
