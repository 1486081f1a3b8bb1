"""Shared test helpers: where the golden fixtures and the LFW development copy live.

Both are found relative to the project root (``../shared``), or under ``$FACEANONYMIXER_SHARED`` when set (a
checkout whose parent folder holds no ``shared``, e.g. a git worktree). When absent (a user's fresh clone) the tests
that need them are *skipped with a reason*, never silently passed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEANONYMIXER_SHARED") or ROOT.parent / "shared")
FIXTURES = SHARED / "fixtures"
LFW = SHARED / "data" / "lfw"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (faster than two, steady on busy cores); the suite's own
    thread count is restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.skip(f"golden fixtures not found at {FIXTURES} (they ship with the development checkout only)")
    return FIXTURES


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not (LFW / "images").is_dir():
        pytest.skip(f"LFW development copy not found at {LFW}")
    return LFW


def load_fixture(name: str) -> dict:
    """torch.load a golden .pt with weights_only=True (the spec says every file loads that way)."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    return torch.load(path, weights_only=True, map_location="cpu")
