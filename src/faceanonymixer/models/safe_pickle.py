"""Restricted unpickler for NVlabs network pickles (stylegan2-ada-pytorch / stylegan3 ``.pkl``).

NVlabs pickles embed the Python source of every network class and ``torch_utils.persistence`` exec()s it on
load. Here nothing from the file is executed: ``find_class`` resolves only an allow-list of globals, each mapped
to a small function of ours; the persistence hook becomes an inert ``PersistentObject`` that records the
class name, its ``__dict__`` state (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs`` ...). Any other
global (e.g. ``os.system`` from a malicious ``__reduce__``) raises ``CheckpointFormatError`` before it is called.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointFormatError


class PersistentObject:
    """Placeholder for a ``@persistence.persistent_class`` instance: records, never executes."""

    def __init__(self, meta: dict):
        self.class_name = str(meta.get("class_name", "?"))
        self.version = meta.get("version")
        self.module_src_chars = len(meta.get("module_src") or "")  # the source itself is dropped unread
        state = meta.get("state")
        self.state = state if isinstance(state, dict) else {}

    @property
    def init_kwargs(self) -> dict:
        return _plain(self.state.get("_init_kwargs") or {})

    @property
    def modules(self) -> dict:
        return dict(self.state.get("_modules") or {})

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters, then persistent buffers, then sub-modules (torch's own order)."""
        out: dict[str, torch.Tensor] = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for name, v in (self.state.get("_parameters") or {}).items():
            if v is not None:
                out[prefix + name] = _as_tensor(v)
        for name, v in (self.state.get("_buffers") or {}).items():
            if v is not None and name not in skip:
                out[prefix + name] = _as_tensor(v)
        for name, m in self.modules.items():
            if isinstance(m, PersistentObject):
                out.update(m.state_dict(prefix + name + "."))
            elif m is not None:
                raise CheckpointFormatError(f"sub-module {prefix + name} is a {type(m).__name__}, "
                                            f"not a recorded persistent module")
        return out

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name}, {len(self.modules)} sub-modules)"


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (NEWOBJ + SETITEMs need a dict subclass)."""


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _as_tensor(v) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise CheckpointFormatError(f"expected a tensor in the module state, found {type(v).__name__}")
    return v


# --- allow-listed callables (all ours; arguments are checked) ------------------------------------------------

def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError("persistent object meta is not a dict")
    return PersistentObject(meta)


def _load_from_bytes(b):
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data  # plain tensor: we only read values


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter):
        raise pickle.UnpicklingError("unexpected tensor rebuild function")
    return func(*args)


_NUMERIC_KINDS = set("biufc")


def _np_dtype(name, align=False, copy=True):
    if not isinstance(name, str):
        raise pickle.UnpicklingError("numpy dtype name is not a string")
    dt = np.dtype(name)
    if dt.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not numeric")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only numeric numpy scalars are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): _np_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise _Forbidden(f"{module}.{name}")
        return fn

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not used by NVlabs network pickles")


class _Forbidden(pickle.UnpicklingError):
    pass


def load_pickle(path: str | os.PathLike) -> dict:
    """Unpickle an NVlabs network pickle without executing it; returns the top-level dict whose networks are
    ``PersistentObject``s. Raises CheckpointFormatError naming the file on anything unexpected."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f).load()
    except _Forbidden as e:
        raise CheckpointFormatError(
            f"{path}: refused to load: the pickle references the global '{e}', which is not part of an NVlabs "
            f"network pickle (possible malicious file). Nothing from it was executed.") from None
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path} does not exist") from None
    except CheckpointFormatError:
        raise
    except RecursionError:
        raise CheckpointFormatError(f"{path}: nested deeper than any NVlabs network pickle (malformed or hostile "
                                    "file); refused. Nothing from it was executed.") from None
    except Exception as e:  # noqa: BLE001 - truncated / corrupt / not a pickle
        raise CheckpointFormatError(
            f"{path}: not a readable NVlabs network pickle ({type(e).__name__}: {e}); the file may be truncated "
            f"or corrupt - re-download it") from None
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: expected a dict like {{'G_ema': ...}} at the top level, "
                                    f"found {type(obj).__name__}")
    return obj


def extract_network(path: str | os.PathLike, key: str = "G_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, init_kwargs) of network ``key`` (default 'G_ema') of an NVlabs pickle."""
    obj = load_pickle(path)
    net = obj.get(key)
    if not isinstance(net, PersistentObject):
        raise CheckpointFormatError(f"{path}: no network '{key}' in this pickle (found keys {sorted(obj)}); "
                                    f"expected an NVlabs network pickle with '{key}'")
    try:
        return net.state_dict(), net.init_kwargs
    except RecursionError:   # an allow-listed structure nested absurdly deep: refused, never a traceback
        raise CheckpointFormatError(f"{path}: the network's state is nested deeper than any NVlabs network pickle "
                                    "(malformed or hostile file); refused. Nothing from it was executed.") from None
