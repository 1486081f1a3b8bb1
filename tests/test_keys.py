"""Keys: deterministic derivation, key files, and the secret never leaving the Key object."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import stat

import pytest
import torch

from faceanonymixer import cli
from faceanonymixer.errors import KeyFileError
from faceanonymixer.keys import Key, key_psi, key_wplus, read_key_file, write_key_file
from faceanonymixer.models.stylegan2 import Generator

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

SECRET = bytes(range(32))


def tiny_generator():
    torch.manual_seed(0)
    return Generator(resolution=16, z_dim=32, w_dim=32, n_mlp=2, channels={4: 8, 8: 8, 16: 8}).eval()


def test_derivation_is_deterministic_and_context_bound():
    a, b = Key(SECRET), Key(SECRET)
    assert a == b and a.fingerprint == b.fingerprint
    # the fingerprint is HMAC-SHA256(secret, fixed label), cut to 16 hex characters
    assert a.fingerprint == hmac.new(SECRET, b"faceanonymixer/fingerprint/v1", hashlib.sha256).hexdigest()[:16]
    assert torch.equal(a.z(512), b.z(512))
    assert not torch.equal(a.z(512), a.z(512, context="another-app"))
    assert not torch.equal(a.z(512), Key(bytes(31) + b"\x01").z(512))
    # z is a fixed CPU draw from the HMAC seed
    g = torch.Generator().manual_seed(a.seed())
    assert torch.equal(a.z(64), torch.randn(1, 64, generator=g))
    G = tiny_generator()
    w1, w2 = key_wplus(a, G), key_wplus(b, G)
    assert w1.shape == (1, G.num_ws, 32) and torch.equal(w1, w2)
    assert torch.equal(w1[:, 0], w1[:, -1])                        # one w broadcast to every layer
    # truncation psi=0.7 towards latent_avg
    w = G.mapping(a.z(32))
    assert torch.allclose(w1[0, 0], G.latent_avg + 0.7 * (w[0] - G.latent_avg), atol=1e-6)


def test_key_truncation_precedence():
    """config psi > the generator weights' key_psi (meta) > 0.7 (paper)."""
    a, G = Key(SECRET), tiny_generator()
    w = G.mapping(a.z(32))[0]
    assert key_psi(G) == 0.7 and key_psi(G, 0.5) == 0.5
    G.key_psi = 1.0                                                   # as load_generator sets it from meta
    assert key_psi(G) == 1.0 and key_psi(G, 0.7) == 0.7
    assert torch.allclose(key_wplus(a, G)[0, 0], w, atol=1e-6)       # psi 1: the mapped w itself
    assert torch.allclose(key_wplus(a, G, psi=0.5)[0, 0], G.latent_avg + 0.5 * (w - G.latent_avg), atol=1e-6)


def test_passphrase_is_stretched_deterministically():
    a = Key.from_passphrase("correct horse battery staple")
    assert a == Key.from_passphrase("correct horse battery staple")
    assert a != Key.from_passphrase("correct horse battery staple", salt="bob")
    assert a != Key.from_passphrase("correct horse battery stapler")
    with pytest.raises(KeyFileError):
        Key.from_passphrase("")


def test_key_file_roundtrip_mode_and_no_overwrite(tmp_path):
    p = tmp_path / "k.key"
    k = write_key_file(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert read_key_file(p) == k
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(p)
    assert read_key_file(p) == k                                   # untouched
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]   # no temp file left


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe" * 50, b"hello\n", b"faceanonymixer-key v1\nabcd\n",
                                     b"faceanonymixer-key v1\n" + b"zz" * 32 + b"\n",
                                     b"faceanonymixer-key v2\n" + SECRET.hex().encode() + b"\n", b"x" * 10000])
def test_bad_key_files(tmp_path, content):
    p = tmp_path / "bad.key"
    p.write_bytes(content)
    with pytest.raises(KeyFileError) as e:
        read_key_file(p)
    assert str(p) in str(e.value)
    if b"v2" in content:
        assert SECRET.hex() not in str(e.value)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "nope.key")


def test_secret_absent_from_repr_pickle_cli_and_logs(tmp_path, capsys, caplog):
    k = Key(SECRET)
    for text in (repr(k), str(k), f"{k}", f"{k!r}", "%s" % k):
        assert SECRET.hex() not in text and k.fingerprint in text
    with pytest.raises(TypeError):
        pickle.dumps(k)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "a.key"
    assert cli.main(["-v", "keygen", "--out", str(out)]) == 0
    secret_hex = out.read_text().split()[-1]
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert read_key_file(out).fingerprint in everything
    assert secret_hex not in everything and secret_hex.upper() not in everything
    # refusing to overwrite is a clean user error (exit 2), still without the secret
    assert cli.main(["keygen", "--out", str(out)]) == 2
    assert secret_hex not in capsys.readouterr().err
