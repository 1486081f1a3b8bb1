"""Configs are dataclasses loaded from YAML. ``load(cls, path, overrides)`` fills nested dataclasses,
rejects unknown keys (a typo must not be silently ignored) and applies ``a.b=value`` overrides."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path

import yaml

from .errors import FaceAnonyMixerError


class ConfigError(FaceAnonyMixerError):
    pass


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {}
    limits = getattr(cls, "LIMITS", {})
    for k, v in data.items():
        t = hints[k]
        sub = _dataclass_type(t)
        if sub is not None and isinstance(v, dict):
            kwargs[k] = _build(sub, v, f"{where}.{k}")
            continue
        v = _checked(v, t, f"{where}.{k}")
        if k in limits and v is not None:
            lo, hi = limits[k]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
                raise ConfigError(f"{where}.{k} must be {rng}, got {v!r}")
        kwargs[k] = v
    return cls(**kwargs)


def _checked(v, t, where: str):
    """``v`` if it has type ``t`` (ints are accepted for floats), else ConfigError naming the key. Only the types
    configs use are checked (bool, int, float, str, list[...], X | None); anything else passes."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if isinstance(t, types.UnionType) or origin is typing.Union:
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _checked(v, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{where} must not be null")
    if t is bool:
        if isinstance(v, bool):
            return v
    elif t is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif t is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    elif t is str:
        if isinstance(v, str):
            return v
    elif origin is list:
        if isinstance(v, list):
            return [_checked(x, args[0], f"{where}[{i}]") for i, x in enumerate(v)] if args else v
    else:
        return v
    name = getattr(t, "__name__", str(t))
    raise ConfigError(f"{where} must be {name}, got {v!r} ({type(v).__name__})")


def _dataclass_type(t):
    if dataclasses.is_dataclass(t):
        return t
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        for a in typing.get_args(t):
            if dataclasses.is_dataclass(a):
                return a
    return None


def from_dict(cls, data: dict, where: str = "config"):
    return _build(cls, data or {}, where)


def load(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Load dataclass ``cls`` from a YAML file (or defaults) and apply ``key.sub=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key.sub=value")
        key, val = ov.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(val)
    return from_dict(cls, data, str(path or "config"))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def hash_dict(cfg):
    """``to_dict`` without the fields a class lists in ``HASH_OMIT_DEFAULTS`` while they hold their default: an
    opt-in field added later does not change the hash (and so the resumability) of configs that do not use it."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    omit = getattr(type(cfg), "HASH_OMIT_DEFAULTS", ())
    out, full = {}, dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in omit and f.default is not dataclasses.MISSING and v == f.default:
            continue
        out[f.name] = hash_dict(v) if dataclasses.is_dataclass(v) else full[f.name]
    return out


def config_hash(cfg) -> str:
    """Stable short hash of a config (for caches and sidecars)."""
    blob = json.dumps(hash_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
