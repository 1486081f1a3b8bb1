"""Our own weights: ``<name>.safetensors`` plus ``<name>.json`` beside it.

The JSON holds ``{"format", "config", "meta", "storage_dtype"}``; the same config/meta are also embedded in the
safetensors metadata, so the weights file alone is enough if the JSON gets lost. Optional float16 storage halves
the file; floating tensors are cast back to float32 on load. A float32 round trip is bit-exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointFormatError

FORMAT = "faceanonymixer-weights/1"


def config_path(path: str | os.PathLike) -> Path:
    """The JSON file that sits beside a weights file (same stem, ``.json``)."""
    return Path(path).with_suffix(".json")


def _jsonable(obj):
    """Tuples -> lists, non-string dict keys -> strings, so json.dumps cannot fail half-way."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_model(module: torch.nn.Module | dict,      # module (its state_dict is saved) or a state dict
               path: str | os.PathLike,             # target ``.safetensors`` file (suffix added if missing)
               config: dict,                        # constructor kwargs needed to rebuild the module
               meta: dict | None = None,            # free-form provenance (training data, steps, licence ...)
               fp16: bool = False,                  # store floating tensors as float16
               ) -> Path:
    """Write ``path`` (.safetensors) and its JSON config beside it; returns the weights path."""

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    tensors = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state entry {k!r} is not a tensor ({type(v).__name__})")
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point():
            v = v.to(torch.float16)
        # own storage, standard layout: safetensors refuses shared / non-contiguous tensors
        tensors[k] = v.contiguous().clone()
    doc = dict(format=FORMAT, config=_jsonable(config), meta=_jsonable(meta or {}),
               storage_dtype="float16" if fp16 else "float32")
    text = json.dumps(doc, indent=2, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"faceanonymixer": json.dumps(doc, sort_keys=True)})
    os.replace(tmp, path)
    config_path(path).write_text(text + "\n")
    return path


def read_doc(path: str | os.PathLike) -> dict:
    """The JSON document of a weights file (from the JSON beside it, else from the safetensors metadata)."""
    path = Path(path)
    cp = config_path(path)
    try:
        if cp.is_file():
            doc = json.loads(cp.read_text())
        else:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
            if "faceanonymixer" not in md:
                raise CheckpointFormatError(
                    f"{path}: no config found: expected {cp} beside it or a 'faceanonymixer' entry in the "
                    f"safetensors metadata (files written by faceanonymixer.models.io.save_model have both)")
            doc = json.loads(md["faceanonymixer"])
    except CheckpointFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is a format error for the user
        raise CheckpointFormatError(f"{path}: cannot read its config ({type(e).__name__}: {e}); expected a "
                                    f"faceanonymixer safetensors file with a JSON config beside it") from e
    if not isinstance(doc, dict) or "config" not in doc:
        raise CheckpointFormatError(f"{cp}: not a faceanonymixer weights config (expected a 'config' entry)")
    return doc


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``path`` -> (state_dict with float32 floating tensors, config dict)."""

    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path} does not exist (expected a .safetensors weights file)")
    doc = read_doc(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                                    f"the file may be truncated - re-export or re-download it") from e
    state = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in state.items()}
    return state, doc["config"]


def load_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict saved with the weights."""
    return read_doc(path).get("meta", {})
