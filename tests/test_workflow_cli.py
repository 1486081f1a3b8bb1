"""The keygen / protect / enrol / verify / revoke CLI on the real sample photos.

The mechanics run with tiny random models injected into the real CLI code path (``args.protector``); the
biometric claim (same key matches, revoked key does not) needs the embedded weights and skips without them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _tiny import run_cli, tiny_protector

from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.gallery import Gallery
from faceanonymixer.keys import Key, write_key_file
from faceanonymixer.registry import data_dir

SAMPLES = data_dir() / "samples"


@pytest.fixture(scope="module")
def tiny():
    return tiny_protector()


run = run_cli


def test_protect_cli_continues_past_bad_items(tiny, tmp_path, capsys):
    src = tmp_path / "in" / "obama"
    src.mkdir(parents=True)
    shutil.copy(SAMPLES / "obama.jpg", src / "a.jpg")
    (src / "b.jpg").write_bytes(b"not a jpeg")
    (src / "c.png").write_bytes(b"")
    key = tmp_path / "k.key"
    assert run(["keygen", "--out", str(key)]) == 0
    secret = key.read_text().split()[-1]
    assert run(["protect", str(src), str(tmp_path / "missing"), "--key", str(key), "--out", str(tmp_path / "out")],
               tiny) == 1
    out = capsys.readouterr()
    assert "3 item(s) failed" in out.err and "b.jpg" in out.err and "c.png" in out.err and "missing" in out.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "faceanonymixer-run.jsonl", "obama"]                       # always OUT/<person>/, whatever failed
    assert sorted(p.name for p in (tmp_path / "out" / "obama").iterdir()) == ["a.json", "a.png"]
    side = (tmp_path / "out" / "obama" / "a.json").read_text()
    assert secret not in out.out + out.err + side
    assert "obama" not in side and "a.jpg" not in side            # the sidecar names neither person nor source
    # wrong key file: clean error naming it
    (tmp_path / "bad.key").write_text("nonsense")
    assert run(["protect", str(src), "--key", str(tmp_path / "bad.key"), "--out", str(tmp_path / "o2")], tiny) == 2
    assert "bad.key" in capsys.readouterr().out


def test_enrol_verify_revoke_mechanics(tiny, tmp_path, capsys):
    db, k1, k2 = str(tmp_path / "g.db"), str(tmp_path / "k1.key"), str(tmp_path / "k2.key")
    run(["keygen", "--out", k1])
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--key", k1,
                "--gallery", db], tiny) == 0
    with Gallery(db) as g:
        tpl = g.templates("obama")
        assert len(tpl) == 2 and all(np.isclose(np.linalg.norm(e), 1, atol=1e-4) for _, _, e in tpl)
        assert all(png.startswith(b"\x89PNG") for png in g.images("obama"))
    capsys.readouterr()
    rc = run(["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, "--gallery", db, "--threshold", "-1"], tiny)
    v = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and v["match"] and -1 <= v["score"] <= 1
    # a second key for an enrolled person is refused until revocation
    run(["keygen", "--out", k2])
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), "--key", k2, "--gallery", db], tiny) == 2
    assert run(["revoke", "obama", "--gallery", db], tiny) == 0
    capsys.readouterr()
    assert run(["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, "--gallery", db, "--threshold", "-1"],
               tiny) == 1
    assert json.loads(capsys.readouterr().out.strip())["match"] is False
    with Gallery(db) as g:
        assert g.templates("obama") == [] and g.is_revoked("obama", json.loads(json.dumps(v))["key_fingerprint"])
    assert run(["revoke", "obama", str(SAMPLES / "obama.jpg"), "--gallery", db, "--new-key", k2], tiny) == 2
    assert "already revoked" in capsys.readouterr().out          # a revoked person is re-enrolled with enrol
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), "--key", k1, "--gallery", db], tiny) == 2
    assert "revoked" in capsys.readouterr().out                  # the old key never comes back
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), "--gallery", db, "--key", k2], tiny) == 0
    with Gallery(db) as g:
        assert len(g.templates("obama")) == 1 and g.templates("obama")[0][0] != v["key_fingerprint"]


def _embedded_models_present() -> bool:
    try:
        from faceanonymixer.models import encoders  # noqa: F401
        from faceanonymixer.registry import locate
        locate("fam-stylegan2-64")
        locate("fam-e4e-64")
        return True
    except (ImportError, FaceAnonyMixerError):
        return False


@pytest.mark.skipif(not _embedded_models_present(), reason="embedded fam-stylegan2-64 / fam-e4e-64 weights not present")
def test_enrol_then_verify_matches_with_embedded_models(tmp_path, capsys):
    """Same key -> match at the generator's calibrated threshold. A fixed key keeps it reproducible; with fresh
    random keys and the workflow's key anchor a probe protected alone scored 0.76-0.90 in five runs, all accepted
    (without the anchor 0.65-0.82, some rejected; docs/method.md 'Known limits')."""
    db, k1 = str(tmp_path / "g.db"), tmp_path / "k1.key"
    write_key_file(k1, Key(bytes([1]) * 32))
    k1 = str(k1)
    s = ["--set", "protect.optim.steps=15"]
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--key", k1,
                "--gallery", db] + s) == 0
    capsys.readouterr()
    assert run(["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, "--gallery", db] + s) == 0


@pytest.mark.skipif(not _embedded_models_present(), reason="embedded fam-stylegan2-64 / fam-e4e-64 weights not present")
def test_revoked_key_no_longer_matches_with_embedded_models(tmp_path, capsys):
    """enrol -> revoke -> verify at the threshold the embedded generator names (calibrated at FAR 1e-3 on the
    100-person evaluation): the old key's probe is rejected, the new key's accepted. Fixed keys keep the run
    reproducible; lab/probes/workflow_scores.sh prints the same scores for fresh random keys."""
    db, k1, k2 = str(tmp_path / "g.db"), tmp_path / "k1.key", tmp_path / "k2.key"
    write_key_file(k1, Key(bytes([1]) * 32))
    write_key_file(k2, Key(bytes([2]) * 32))
    k1, k2 = str(k1), str(k2)
    s = ["--set", "protect.optim.steps=15"]
    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--key", k1,
                "--gallery", db] + s) == 0
    assert run(["revoke", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--gallery", db,
                "--new-key", k2] + s) == 0
    capsys.readouterr()
    assert run(["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, "--gallery", db] + s) == 1
    assert run(["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k2, "--gallery", db] + s) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    old_key, new_key = out[-2], out[-1]
    assert not old_key["match"] and old_key["reason"] == "key revoked for this person"   # refused outright
    assert new_key["threshold"] > 0.363     # the calibrated one, not OpenCV's real-face value
    assert new_key["match"] and new_key["threshold"] <= new_key["score"]


@pytest.mark.skipif(not _embedded_models_present(), reason="embedded fam-stylegan2-64 / fam-e4e-64 weights not present")
def test_workflow_protects_with_the_key_anchor_and_protect_keeps_the_paper_setting():
    """enrol/verify/revoke protect lone probes: they use workflow.w_anchor; `protect` keeps loss.w_anchor (0)."""
    from faceanonymixer.workflow import load_config, workflow_protector
    cfg = load_config()
    assert cfg.workflow.w_anchor == 10000.0 and cfg.protect.loss.w_anchor == 0.0
    prot = workflow_protector(cfg)
    assert prot.config.loss.w_anchor == 10000.0 and cfg.protect.loss.w_anchor == 0.0   # the config is not mutated
    cfg.workflow.w_anchor = None
    assert workflow_protector(cfg).config.loss.w_anchor == 0.0


@pytest.mark.skipif(not _embedded_models_present(), reason="embedded fam-stylegan2-64 / fam-e4e-64 weights not present")
def test_mixer_engine_workflow_on_sample_photos(tmp_path, capsys):
    """enrol -> verify -> stolen key -> revoke -> verify with `--set protect.engine=mixer` (the shipped
    fam-mixer-64, one pass per photo) on the real sample photos, at the workflow's calibrated threshold. What holds
    for every key: the old key is refused after revocation, Biden's photo under Obama's stolen key is rejected and
    scores below Obama's own probe under the same key. What does not: the genuine probe is accepted only about
    half the time (fixed key k1 here: rejected, k2: accepted; 20 fresh random keys: docs/mixer.md), which is why
    the workflow keeps the paper's optimisation (docs/mixer.md, "Which engine the workflow uses")."""
    db, k1, k2 = str(tmp_path / "g.db"), tmp_path / "k1.key", tmp_path / "k2.key"
    write_key_file(k1, Key(bytes([1]) * 32))
    write_key_file(k2, Key(bytes([2]) * 32))
    k1, k2 = str(k1), str(k2)
    s = ["--set", "protect.engine=mixer"]

    def verify(photo, key):
        rc = run(["verify", "obama", str(SAMPLES / photo), "--key", key, "--gallery", db] + s)
        return rc, json.loads([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")][-1])

    assert run(["enrol", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--key", k1,
                "--gallery", db] + s) == 0
    capsys.readouterr()
    genuine, stolen = verify("obama3.jpg", k1), verify("biden.jpg", k1)
    assert run(["revoke", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--gallery", db,
                "--new-key", k2] + s) == 0
    capsys.readouterr()
    old, new, stolen_new = verify("obama3.jpg", k1), verify("obama3.jpg", k2), verify("biden.jpg", k2)
    assert old[0] == 1 and old[1]["reason"] == "key revoked for this person"      # refused outright
    for (g_rc, g), (s_rc, st) in ((genuine, stolen), (new, stolen_new)):
        assert s_rc == 1 and not st["match"]                   # the stolen key does not let Biden in
        assert st["score"] < g["score"]                        # Obama's own probe outscores him under that key
        assert g_rc == (0 if g["match"] else 1) and g["threshold"] > 0.7   # the generator's calibrated threshold
    assert new[0] == 0 and new[1]["match"]                     # k2: the genuine probe accepted after revocation
