"""Typed dataclass configurations: one way to build them from JSON files and overrides.

``load(cls, file, overrides, base)`` reads an optional JSON file, lays it over ``base`` (e.g. a
recipe preset) and applies ``overrides`` (dotted keys such as ``"train.lr"``, as the command
line gives them), then builds ``cls`` recursively: a field whose type is a dataclass is built
from its sub-dict (a class with ``from_dict`` builds itself, e.g. ``ModelConfig`` from a preset
name plus overrides).  Unknown keys are ``ConfigError`` naming the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from pathlib import Path

from .errors import ConfigError


def from_dict(cls, d: dict, what: str):
    """``cls(**d)`` after checking every key is a field of ``cls`` (typos -> one-line ConfigError);
    dataclass-typed fields given as dicts are built recursively."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} config must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {what} config keys: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in d.items():
        t = hints.get(k)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = t.from_dict(v) if hasattr(t, "from_dict") else from_dict(t, v, f"{what}.{k}")
        elif fields[k].type in ("tuple", "tuple[float, float]") or typing.get_origin(t) is tuple:
            v = tuple(v) if isinstance(v, list) else v
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"bad {what} config ({e})") from None


def read_json(path) -> dict:
    """A JSON config file holding one object (errors name the file)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file not found", p) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file is not valid JSON ({e})", p) from None
    if not isinstance(d, dict):
        raise ConfigError("config file must hold a JSON object", p)
    return d


def merge(base: dict, over: dict) -> dict:
    """``over`` laid onto ``base`` (nested dicts merged key by key; a copy)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def nest(overrides: dict) -> dict:
    """``{"train.lr": 0.1, "seed": 1}`` -> ``{"train": {"lr": 0.1}, "seed": 1}``; None values are
    left out (an option the user did not give)."""
    out: dict = {}
    for key, v in overrides.items():
        if v is None:
            continue
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def load(cls, file=None, overrides: dict | None = None, base: dict | None = None, what: str = "run"):
    """Build ``cls`` from ``base`` <- JSON ``file`` <- ``overrides`` (see the module docstring)."""
    d = dict(base or {})
    if file is not None:
        d = merge(d, read_json(file))
    d = merge(d, nest(overrides or {}))
    try:
        return from_dict(cls, d, what)
    except ConfigError as e:
        if file is not None and e.path is None:
            raise ConfigError(e.cause, file) from None
        raise


def to_dict(cfg) -> dict:
    """A config as plain JSON-ready data."""
    return dataclasses.asdict(cfg)


SIZE_KEYS = ("width", "fc6", "fc7", "input_scale")
"""What a model preset sets: an explicit preset override drops these from the file's model."""


def load_recipe(cls, recipes: dict, file=None, overrides: dict | None = None, recipe: str | None = None,
                what: str = "run"):
    """``recipes[recipe]`` <- JSON ``file`` <- ``overrides``; the recipe is ``recipe``, else the
    file's ``"recipe"`` key, else ``default``.  A ``model.preset`` override replaces the network
    sizes that the recipe and the file give."""
    overrides = dict(overrides or {})
    data = read_json(file) if file is not None else {}
    recipe = recipe or data.get("recipe") or "default"
    if recipe not in recipes:
        raise ConfigError(f"unknown recipe {recipe!r} (choose from {', '.join(recipes)})")
    base = copy.deepcopy(recipes[recipe])
    if overrides.get("model.preset") is not None:
        for d in (base, data):
            m = d.get("model")
            if isinstance(m, dict):
                d["model"] = {k: v for k, v in m.items() if k not in SIZE_KEYS}
    overrides["recipe"] = recipe
    try:
        return from_dict(cls, merge(merge(base, data), nest(overrides)), what)
    except ConfigError as e:
        if file is not None and e.path is None:
            raise ConfigError(e.cause, file) from None
        raise
