"""``Level`` and ``LevelSet``: the one internal structure every level source fills (LPS mm)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES

CORNER_NAMES = ("anterior-superior", "posterior-superior", "posterior-inferior", "anterior-inferior")


@dataclass
class Level:
    name: str
    centroid: np.ndarray  # (3,) LPS mm
    corners: np.ndarray | None = None  # (4, 3) LPS mm, CORNER_NAMES order
    slice_range: tuple[int, int] | None = None  # first, last sagittal slice index (inclusive)
    mid_slice: int | None = None
    confidence: float = 1.0

    def __post_init__(self):
        self.centroid = np.asarray(self.centroid, dtype=np.float64).reshape(3)
        if self.corners is not None:
            self.corners = np.asarray(self.corners, dtype=np.float64).reshape(4, 3)
        if self.slice_range is not None:
            self.slice_range = (int(self.slice_range[0]), int(self.slice_range[1]))
        if self.mid_slice is not None:
            self.mid_slice = int(self.mid_slice)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "centroid_lps": [round(float(v), 4) for v in self.centroid],
            "corners_lps": None if self.corners is None else [[round(float(v), 4) for v in c] for c in self.corners],
            "slice_range": None if self.slice_range is None else list(self.slice_range),
            "mid_slice": self.mid_slice,
            "confidence": round(float(self.confidence), 4),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Level":
        return cls(
            name=d["name"],
            centroid=d["centroid_lps"],
            corners=d.get("corners_lps"),
            slice_range=d.get("slice_range"),
            mid_slice=d.get("mid_slice"),
            confidence=d.get("confidence", 1.0),
        )


@dataclass
class LevelSet:
    """Levels of one scan, keyed by name, plus the problems found while building it."""

    levels: dict[str, Level] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)  # human-readable flags, e.g. "S1: outside volume"
    source: str = ""

    def __post_init__(self):
        self.levels = {n: self.levels[n] for n in LEVEL_NAMES if n in self.levels} | {
            n: v for n, v in self.levels.items() if n not in LEVEL_NAMES
        }

    def __contains__(self, name: str) -> bool:
        return name in self.levels

    def __getitem__(self, name: str) -> Level:
        return self.levels[name]

    def __iter__(self):
        return iter(self.levels.values())

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def names(self) -> list[str]:
        return list(self.levels)

    def discs(self) -> list[tuple[str, Level, Level]]:
        """(disc name, upper VB, lower VB) for every disc whose two neighbours are present."""
        out = []
        for disc, (a, b) in zip(DISC_NAMES, zip(LEVEL_NAMES[:-1], LEVEL_NAMES[1:])):
            if a in self.levels and b in self.levels:
                out.append((disc, self.levels[a], self.levels[b]))
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "levels": [l.to_dict() for l in self], "issues": list(self.issues)}

    @classmethod
    def from_dict(cls, d: dict) -> "LevelSet":
        return cls({x["name"]: Level.from_dict(x) for x in d["levels"]}, list(d.get("issues", [])), d.get("source", ""))

    def replace(self, **kw) -> "LevelSet":
        return dataclasses.replace(self, **kw)
