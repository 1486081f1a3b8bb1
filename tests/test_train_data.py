"""train.data: flat folders (UTKFace-style, no identities) beside identity folders, manifest and content splits,
the aligned caches and the `faceanonymixer train data` command that builds them."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.config import ConfigError
from faceanonymixer.registry import data_dir
from faceanonymixer.train import data as D

SAMPLES = data_dir() / "samples"
FACES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]


def _split_of(b: bytes) -> str:  # the rule written in the UTKFace manifest's README, computed independently
    h = int.from_bytes(hashlib.sha256(b).digest()[:8], "big") / 2.0 ** 64
    return "holdout" if h < 0.1 else "val" if h < 0.3 else "train"


def test_content_split_is_the_manifest_rule():
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(32) for _ in range(400)]
    got = [D.content_split(b) for b in blobs]
    assert got == [_split_of(b) for b in blobs]
    share = {s: got.count(s) / len(got) for s in ("holdout", "val", "train")}
    assert 0.05 < share["holdout"] < 0.15 and 0.14 < share["val"] < 0.26 and 0.6 < share["train"] < 0.8, share


@pytest.fixture()
def flat_folder(tmp_path):
    """Four real faces under UTKFace-style names, a photo without a face, and a file the manifest does not list."""
    d = tmp_path / "utk"
    d.mkdir()
    names = []
    for i, f in enumerate(FACES):
        n = f"{20 + i}_{i % 2}_{i % 5}_2017011{i}.jpg.chip.jpg"
        shutil.copy(SAMPLES / f, d / n)
        names.append(n)
    Image.new("RGB", (200, 200), (120, 120, 120)).save(d / "30_0_1_20170110.jpg.chip.jpg")
    shutil.copy(SAMPLES / "obama.jpg", d / "40_0_0_unlisted.jpg.chip.jpg")   # never listed: must never be read
    man = tmp_path / "manifest.csv"
    rows = ["file,sha256,age,gender,race,split"]
    rows += [f"{n},x,20,0,0,train" for n in names[:3]] + [f"{names[3]},x,20,0,0,val"]
    rows += ["30_0_1_20170110.jpg.chip.jpg,x,30,0,1,train", "99_0_0_missing.jpg.chip.jpg,x,99,0,0,train"]
    man.write_text("\n".join(rows) + "\n")
    return d, man, names


def test_list_flat_reads_only_the_manifests_split(flat_folder):
    d, man, names = flat_folder
    got = [p.name for p in D.list_flat(d, "train", man)]
    assert got == sorted(names[:3] + ["30_0_1_20170110.jpg.chip.jpg"])       # absent 99_... is skipped
    assert [p.name for p in D.list_flat(d, "val", man)] == [names[3]]
    every = D.list_flat(d, None)                                             # no manifest: content split
    assert all(D.content_split(p.read_bytes()) != "holdout" for p in every)


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="manifest .*nope.csv does not exist"):
        D.read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,group\na.jpg,x\n")
    with pytest.raises(ConfigError, match="bad.csv: needs the columns file and split"):
        D.read_manifest(bad)


def test_expand_path_and_unset_variables(monkeypatch):
    monkeypatch.setenv("FAM_TEST_DIR", "/data/utk")
    assert D.expand_path("$FAM_TEST_DIR", "flat_data") == "/data/utk"
    assert D.expand_path(None, "flat_data") is None
    monkeypatch.delenv("FAM_UNSET_DIR", raising=False)
    with pytest.raises(ConfigError, match="flat_data: .*FAM_UNSET_DIR.*not set"):
        D.expand_path("$FAM_UNSET_DIR", "flat_data")


def test_training_images_mix_identity_and_flat_folders(tmp_path, flat_folder):
    d, man, names = flat_folder
    people = tmp_path / "people"
    for person, f in (("A_person", "obama.jpg"), ("B_person", "biden.jpg")):
        (people / person).mkdir(parents=True)
        shutil.copy(SAMPLES / f, people / person / "1.jpg")
    split = {p: D.person_split(p) for p in ("A_person", "B_person")}
    n_people = sum(s == "train" for s in split.values())
    imgs, persons = D.training_images(str(people), tmp_path / "cache", 32, str(d), str(man))
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (32, 32, 3)
    flat = [p for p in persons if str(p).startswith("flat:")]
    assert sorted(flat) == sorted(f"flat:{n}" for n in names[:3])            # the grey photo has no face
    assert len(persons) == n_people + 3
    cache = tmp_path / "cache" / "utk_flat_train_32.npz"
    assert D.cache_summary(cache) == {"images": 3, "failed": 1}
    imgs_only_flat, _ = D.training_images("none", tmp_path / "cache", 32, str(d), str(man))
    assert imgs_only_flat.shape[0] == 3
    with pytest.raises(ConfigError, match="flat_manifest is set but flat_data is not"):
        D.training_images("none", tmp_path / "cache", 32, None, str(man))
    with pytest.raises(ConfigError, match="does not exist.*flat_data"):
        D.training_images("none", tmp_path / "c2", 32, str(tmp_path / "nowhere"))


def test_train_data_command_prints_what_it_cached(tmp_path, flat_folder):
    d, man, _ = flat_folder
    r = subprocess.run([sys.executable, "-c", "import sys; from faceanonymixer.cli import main; sys.exit(main())",
                        "train", "data", "--set", "data=none", "--set", f"flat_data={d}", "--set", f"flat_manifest={man}",
                        "--set", f"cache={tmp_path / 'c'}", "--set", "resolution=32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "flat folder: 3 aligned 32x32 photos, 1 without a usable face" in r.stdout
    assert "training photos in all: 3" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no photo of the 'train' split"):
        D.prepare_aligned_flat(empty, tmp_path / "c3", 32)
    r = subprocess.run([sys.executable, "-c", "import sys; from faceanonymixer.cli import main; sys.exit(main())",
                        "train", "data", "--set", "data=none", "--set", f"cache={tmp_path / 'c4'}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no training data" in r.stderr and "Traceback" not in r.stderr


def test_v2_generator_config_changes_only_the_data(monkeypatch):
    """configs/train_generator_v2.yaml is v1's recipe on more data: only the data fields, the output folder and the
    starting state differ, so what v2 measures is the effect of the data (docs/models.md)."""
    import dataclasses
    from pathlib import Path

    from faceanonymixer import config as config_mod
    from faceanonymixer.train.gan import GeneratorTrainConfig
    root = Path(__file__).resolve().parents[1]
    v1 = config_mod.load(GeneratorTrainConfig, root / "configs/train_generator.yaml", [])
    v2 = config_mod.load(GeneratorTrainConfig, root / "configs/train_generator_v2.yaml", [])
    changed = {f.name for f in dataclasses.fields(v1) if getattr(v1, f.name) != getattr(v2, f.name)}
    assert changed == {"flat_data", "out", "init_from"}, changed
    assert (root / v2.init_from).is_file()
    monkeypatch.delenv("FACEANONYMIXER_UTKFACE", raising=False)
    with pytest.raises(ConfigError, match="flat_data: .*FACEANONYMIXER_UTKFACE.*not set"):
        D.expand_path(v2.flat_data, "flat_data")
