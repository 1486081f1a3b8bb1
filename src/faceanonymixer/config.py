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
    for k, v in data.items():
        t = hints[k]
        sub = _dataclass_type(t)
        kwargs[k] = _build(sub, v, f"{where}.{k}") if sub is not None and isinstance(v, dict) else v
    return cls(**kwargs)


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


def config_hash(cfg) -> str:
    """Stable short hash of a config (for caches and sidecars)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
