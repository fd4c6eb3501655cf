"""Shared helpers for the typed dataclass configurations."""

from __future__ import annotations

import dataclasses

from .errors import ConfigError


def from_dict(cls, d: dict, what: str):
    """``cls(**d)`` after checking every key is a field of ``cls`` (typos -> one-line ConfigError)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {what} config keys: {', '.join(sorted(unknown))}")
    return cls(**d)
