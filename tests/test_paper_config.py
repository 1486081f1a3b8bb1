"""configs/paper.yaml (the paper's settings, each with its source), the files it needs in the registry and in
`faceanonymixer weights`, and (slow) the whole configuration at full size on random-weight networks in the
official file formats: benchmarks/bench_paper.py on the CPU, 2 refinement + 2 optimisation steps."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from faceanonymixer import registry
from faceanonymixer.cli import main as cli_main
from faceanonymixer.workflow import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper.yaml"
BENCH = ROOT / "benchmarks" / "bench_paper.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_paper", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_yaml_holds_the_papers_numbers_each_with_its_source():
    p = load_config(PAPER).protect
    assert (p.models.generator, p.models.inverter, p.models.id_net) == ("stylegan2-ffhq-1024", "e4e-ffhq",
                                                                        "arcface-ir-se50")
    r = p.refine
    assert (r.steps, r.lr, r.loss, r.lpips_net, r.w_perc, r.w_mse, r.size) == (150, 5e-4, "lpips", "vgg", 1.0, 0.1, 256)
    assert (p.mixing.assignment, p.mixing.identity_layers) == ("readme", [3, 4, 5, 6, 7])
    lc = p.loss
    assert (lc.w_anon, lc.w_idp, lc.w_attr, lc.margin, lc.anon_form, lc.attr_net, lc.w_sep, lc.w_anchor) == \
        (10.0, 10.0, 0.15, 0.0, "abs", "farl-vit-b16", 0.0, 0.0)
    o = p.optim
    assert (o.steps, o.lr, o.milestones, o.gamma, o.augment_copies, o.noise_mode) == \
        (50, 0.01, [0.75, 0.9], 0.8, 5, "const")
    assert p.key.psi == 0.7
    # every setting that is in use names its source: [R] README, [C] released code, [X] FALCO, [I] ours
    unsourced = [ln for ln in PAPER.read_text().splitlines()
                 if re.match(r"\s+\w+: \S", ln) and not re.search(r"#.*\[[RCXI]\]", ln)
                 and not re.match(r"\s+(sep_decoys|sep_margin):", ln)]          # unused while w_sep is 0
    assert not unsourced, unsourced


def test_every_file_of_the_paper_is_in_the_registry_and_in_the_weights_command(capsys, tmp_path, monkeypatch):
    p = load_config(PAPER).protect
    needed = {p.models.generator, p.models.inverter, p.models.id_net, p.loss.attr_net, "lpips-vgg", "vgg16-imagenet",
              "yunet"}
    assert needed == set(registry.PAPER_MODELS)
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(tmp_path))
    assert cli_main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in registry.PAPER_MODELS:
        row = rows[name]
        assert row["looked_in"][0] == str(tmp_path / row["file"])              # $FACEANONYMIXER_HOME first
        assert row["present"] or row["obtain"]                                   # else it says how to get it
    assert rows["vgg16-imagenet"]["sha256"].startswith("397923af")               # torchvision's name = its digest
    assert rows["lpips-vgg"]["present"]                                          # shipped with the package


def test_the_network_guard_records_and_refuses(tmp_path):
    """The guard the full-size run relies on really sees a connection attempt (run in a child process: an
    audit hook cannot be removed)."""
    code = (f"import sys, socket; sys.path.insert(0, {str(BENCH.parent)!r}); import bench_paper as b\n"
            "seen = b.install_network_guard()\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept b.NetworkUsed:\n    pass\n"
            "print(len(seen), seen[0].split()[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    n, event = out.stdout.split()
    assert int(n) >= 1 and event.startswith("socket.")
    assert socket.socket  # this process is untouched


def test_nvlabs_pickle_writer_round_trips_through_the_safe_loader(tmp_path):
    """The full-size run's NVlabs pickle (written without NVlabs code) is read by our restricted unpickler into
    the same generator, on a small generator here."""
    import torch
    from faceanonymixer.models import stylegan2_convert as conv
    from faceanonymixer.models.loading import load_generator
    from faceanonymixer.models.stylegan2 import Generator
    b = _bench()
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channel_base=256, channel_max=32).eval()
    sd = {k: v for k, v in G.state_dict().items() if k != "latent_avg"}
    kw = dict(z_dim=32, w_dim=32, c_dim=0, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=None))
    b.write_nvlabs_pickle(tmp_path / "g.pkl", conv.rosinality_to_nvlabs(sd, G.latent_avg), kw)
    assert "torch_utils" not in sys.modules and b"torch_utils.persistence" in (tmp_path / "g.pkl").read_bytes()
    H = load_generator(tmp_path / "g.pkl")
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in H.state_dict().items())


@pytest.mark.slow
def test_paper_configuration_at_full_size_on_the_cpu(tmp_path):
    """configs/paper.yaml on one sample photo with 1024-px random networks in the official formats: 2 refinement
    and 2 optimisation steps; shapes, the sidecar, no network, peak memory (benchmarks/bench_paper.py)."""
    photo = registry.data_dir() / "samples" / "obama.jpg"
    if not photo.is_file():
        pytest.skip(f"sample photo {photo} not installed (make install)")
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("FACEANONYMIXER_HOME", None)
    out = subprocess.run([sys.executable, str(BENCH), "--files", str(tmp_path / "files"), "--out",
                          str(tmp_path / "out"), "--json", str(report), "--threads", "2"],
                         capture_output=True, text=True, timeout=1500, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["network_events"] == []
    assert rep["generator"] == dict(resolution=1024, num_ws=18, w_dim=512)
    assert rep["nvlabs_pickle_equals_rosinality"] is True
    c = rep["checks"]
    assert c["images"] == [1, 3, 1024, 1024] and c["ws"] == [1, 18, 512] and c["png"] == [1024, 1024]
    assert c["sidecar_models"] == ["attr_net", "generator", "id_net", "inverter", "lpips"]
    assert rep["batch"]["1"]["steps"] == 2
    side = json.loads((tmp_path / "out" / "obama.json").read_text())
    assert side["models"]["generator"]["file"] == "stylegan2-ffhq-config-f.pt"
    assert side["models"]["inverter"]["file"] == "e4e_ffhq_encode.pt"
    assert side["models"]["attr_net"]["name"] == "farl-vit-b16" and side["models"]["id_net"]["name"] == "arcface-ir-se50"
    assert "secret" not in json.dumps(side) and "ws" not in side
    assert rep["peak_rss_mb"] < 12_000, rep["peak_rss_mb"]      # measured 2026-12-08: see docs/method.md
