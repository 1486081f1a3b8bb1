"""Training checkpoints shared by every trainer: one ``checkpoint.pt`` per run folder, written atomically (each
trainer reads it back with ``torch.load(weights_only=True)``); the config is stored as plain JSON-able data."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..fileio import atomic_write

NAME = "checkpoint.pt"


def config_snapshot(cfg) -> dict:
    """A dataclass config as plain data (tuples become lists) for the checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def write_checkpoint(out: Path, state: dict) -> Path:
    """``out/checkpoint.pt`` atomically: a crash leaves the previous checkpoint, never half of a new one."""
    return atomic_write(Path(out) / NAME, lambda f: torch.save(state, f))

