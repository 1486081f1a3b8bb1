"""Atomic file writes: write a temporary file beside the target, fsync, then rename, so a crash never leaves a
half-written output (and never replaces a good file with a broken one)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True,
                 mode: int | None = None) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``.
    ``mode``: file permissions set before any byte is written (e.g. 0o600 for secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def shown(x) -> str:
    """A path or name as it may be printed: control characters (a newline in a file name) escaped, so that a
    message is one line and cannot forge another."""
    s = str(x)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
