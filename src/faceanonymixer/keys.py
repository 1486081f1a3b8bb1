"""Revocable keys: 256-bit secrets (or scrypt-stretched passphrases) -> the key's synthetic W+ code.

Derivation (identical on every machine and device)::

    secret (32 bytes) --HMAC-SHA256(secret, "faceanonymixer/z/v1|" + context)--> seed (first 8 bytes, big-endian)
        --torch.Generator(cpu).manual_seed(seed)--> z ~ N(0, I)[1, z_dim]  (always drawn on the CPU)
        --G.mapping--> w --G.truncate(psi=0.7)--> broadcast to W+ [1, num_ws, w_dim]

A key's *fingerprint* (``Key.fingerprint``) is HMAC-SHA256(secret, "faceanonymixer/fingerprint/v1") cut to 16 hex
characters: it names a key in logs, sidecars and the gallery and reveals nothing usable about the secret.
The secret itself is never part of ``repr``/``str``, a log line, an exception message or an output file; only
``write_key_file`` writes it (mode 0600).

Key file format (text, one line after a header)::

    faceanonymixer-key v1
    <64 hex characters>
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets as _secrets
import stat
from pathlib import Path

import torch

from .errors import KeyFileError
from .fileio import atomic_write, shown

KEY_BYTES = 32                                  # 256-bit secrets
HEADER = "faceanonymixer-key v1"
DEFAULT_CONTEXT = "faceanonymixer/v1"           # application context string (config: key.context)
DEFAULT_PSI = 0.7                               # truncation of the key's w (paper: psi 0.7 on all layers)
_FP_LABEL = b"faceanonymixer/fingerprint/v1"
_SCRYPT = dict(n=2 ** 14, r=8, p=1)             # ~16 MiB, ~50 ms: interactive-strength passphrase stretching
_PASS_SALT = b"faceanonymixer/passphrase/v1|"
_MAX_KEY_FILE = 4096                            # bytes; a key file is ~90
MIN_PASSPHRASE = 12                             # characters (see Key.from_passphrase)


class Key:
    """A revocable key. Holds the 256-bit secret privately; everything printable shows only the fingerprint."""

    __slots__ = ("_secret", "fingerprint")

    def __init__(self, secret: bytes):  # secret: exactly 32 bytes
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != KEY_BYTES:
            raise KeyFileError(f"a key secret must be {KEY_BYTES} bytes (got {type(secret).__name__} of another length)")
        self._secret = bytes(secret)
        self.fingerprint = hmac.new(self._secret, _FP_LABEL, hashlib.sha256).hexdigest()[:16]

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> "Key":
        """A fresh random key from the OS CSPRNG."""
        return cls(_secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: str = "") -> "Key":
        """Stretch a passphrase with scrypt (n=2^14, r=8, p=1). ``salt``: optional public per-user string
        (e.g. a user name) so that equal passphrases of different users give different keys."""
        if len(passphrase) < MIN_PASSPHRASE:
            # The fingerprint in every sidecar lets anyone test guesses offline (one scrypt, ~50 ms, per guess):
            # a short passphrase would fall to a word list.
            raise KeyFileError(f"passphrase too short ({len(passphrase)} characters; at least {MIN_PASSPHRASE}, e.g. "
                               "four random words), or use a key file (faceanonymixer keygen)")
        secret = hashlib.scrypt(passphrase.encode("utf-8"), salt=_PASS_SALT + salt.encode("utf-8"),
                                dklen=KEY_BYTES, maxmem=64 * 1024 * 1024, **_SCRYPT)
        return cls(secret)

    # -- derivations -----------------------------------------------------------------------------------
    def derive(self, label: str) -> bytes:
        """HMAC-SHA256(secret, label): 32 bytes bound to this key and ``label`` (one-way)."""
        return hmac.new(self._secret, label.encode("utf-8"), hashlib.sha256).digest()

    def seed(self, context: str = DEFAULT_CONTEXT, purpose: str = "z") -> int:
        """63-bit seed for ``purpose`` ('z' = the synthetic code; others e.g. 'augment|<image hash>')."""
        d = self.derive(f"faceanonymixer/{purpose}/v1|{context}")
        return int.from_bytes(d[:8], "big") & ((1 << 63) - 1)

    def z(self, z_dim: int, context: str = DEFAULT_CONTEXT) -> torch.Tensor:
        """z[1, z_dim] ~ N(0, I), drawn on the CPU with a fixed generator (same numbers on every machine)."""
        g = torch.Generator(device="cpu").manual_seed(self.seed(context, "z"))
        return torch.randn(1, int(z_dim), generator=g, dtype=torch.float32)

    # -- secrecy ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Key(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self):  # no pickling: a pickled key would be a secret written to an arbitrary place
        raise TypeError("faceanonymixer keys cannot be pickled; store them with keys.write_key_file")

    def __format__(self, spec: str) -> str:
        return repr(self)


def key_psi(generator, psi: float | None = None) -> float:
    """Truncation of the key's code, first match wins: ``psi`` (the config); the value the generator's weights
    name (``meta.key_psi``, measured for that model: our embedded 64-px generator, docs/method.md); 0.7 (paper)."""
    if psi is not None:
        return float(psi)
    named = getattr(generator, "key_psi", None)
    return DEFAULT_PSI if named is None else float(named)


@torch.no_grad()
def key_wplus(key: Key, generator, context: str = DEFAULT_CONTEXT, psi: float | None = None) -> torch.Tensor:
    """The key's synthetic code: W+ [1, num_ws, w_dim] on the generator's device (z drawn on the CPU).
    ``psi`` None = the generator's named truncation, else 0.7 (``key_psi``)."""
    dev = generator.latent_avg.device
    z = key.z(generator.z_dim, context).to(dev)
    w = generator.mapping(z)                                   # [1, w_dim]
    w = generator.truncate(w, key_psi(generator, psi))
    assert w.shape == (1, generator.w_dim), tuple(w.shape)
    return w[:, None, :].expand(1, generator.num_ws, generator.w_dim).contiguous()


# -- key files ---------------------------------------------------------------------------------------------
def write_key_file(path: str | os.PathLike, key: Key | None = None, overwrite: bool = False) -> Key:
    """Write ``key`` (default: a new random key) to ``path`` with mode 0600, atomically. Refuses to overwrite
    an existing file unless ``overwrite``. Returns the key."""
    path = Path(path)
    key = key or Key.generate()
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise KeyFileError(f"{shown(path)} already exists; refusing to overwrite a key (choose another name, "
                           "or give --force to replace it: data protected under the old key can then no longer "
                           "be verified)")
    if (path.exists() or path.is_symlink()) and (path.is_symlink() or not path.is_file()):
        raise KeyFileError(f"{shown(path)} exists and is not a regular file (a link, device or folder); a key is "
                           "never written over it, even with --force. Choose another name.")
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot write key file {shown(path)}: folder {shown(path.parent)} does not exist")
    try:
        atomic_write(path, lambda f: f.write(f"{HEADER}\n{key._secret.hex()}\n"), binary=False, mode=0o600)
    except OSError as e:
        raise KeyFileError(f"cannot write key file {shown(path)} ({e.strerror or e}); choose a writable place") from None
    return key


def read_key_file(path: str | os.PathLike) -> Key:
    """Read a key file; raises KeyFileError naming the file (never quoting its content)."""
    path = Path(path)
    where = shown(path)
    todo = "Check the path, or make a new key with `faceanonymixer keygen --out FILE`."
    if not path.is_file():   # also refuses a FIFO or a device such as /dev/zero, which would never end
        raise KeyFileError(f"key file {where} does not exist or is not a regular file. {todo}")
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise KeyFileError(f"key file {where} is not a regular file. {todo}")
            raw = f.read(_MAX_KEY_FILE + 1)      # never more: a huge file is refused, not read whole
    except OSError as e:
        raise KeyFileError(f"key file {where} cannot be read ({e.strerror}). {todo}") from None
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(f"key file {where} is too large to be a faceanonymixer key. {todo}")
    try:
        lines = raw.decode("ascii").split()
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {where} is not a faceanonymixer key (binary content). {todo}") from None
    if len(lines) < 3 or " ".join(lines[:2]) != HEADER or len(lines) != 3:
        raise KeyFileError(f"key file {where} is not a faceanonymixer key (missing or wrong header '{HEADER}'). {todo}")
    body = lines[2]
    if len(body) != 2 * KEY_BYTES or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise KeyFileError(f"key file {where} is malformed: expected {2 * KEY_BYTES} hex characters after the header. {todo}")
    mode = path.stat().st_mode & 0o077
    if mode:
        logging.getLogger(__name__).warning("key file %s is readable by other users (mode %o); chmod 600 it",
                                            path, path.stat().st_mode & 0o777)
    return Key(bytes.fromhex(body))


def load_key(spec, passphrase: str | None = None, salt: str = "") -> Key:
    """A Key from a Key, a key-file path, or a passphrase (``passphrase=...`` with ``spec=None``)."""
    if isinstance(spec, Key):
        return spec
    if spec is None:
        if passphrase is None:
            raise KeyFileError("no key given: pass a key file (faceanonymixer keygen makes one) or a passphrase")
        return Key.from_passphrase(passphrase, salt)
    return read_key_file(spec)
