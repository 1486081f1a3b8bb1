"""The public API of the package: the names the README's Python quick start uses."""
from __future__ import annotations

import subprocess
import sys


def test_public_names_import_and_are_the_real_objects():
    import faceanonymixer
    from faceanonymixer import FaceAnonyMixerError, Key, Protector, get_recogniser, load_config
    from faceanonymixer.fr import get_recogniser as gr
    from faceanonymixer.keys import Key as K
    from faceanonymixer.pipeline import Protector as P
    from faceanonymixer.workflow import load_config as lc
    assert (Key, Protector, get_recogniser, load_config) == (K, P, gr, lc)
    assert issubclass(FaceAnonyMixerError, Exception) and set(faceanonymixer.__all__) >= {"Key", "Protector"}
    cfg = load_config(None, ["protect.optim.steps=3"])
    assert cfg.protect.optim.steps == 3
    try:
        faceanonymixer.nope
    except AttributeError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_reading_images_and_keys_does_not_import_torch():
    code = "import sys, faceanonymixer.images, faceanonymixer.fileio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
