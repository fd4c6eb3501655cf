"""Training targets of the detector from a ``LevelSet`` (any level source).

Output channels (``CHANNELS``), all heatmaps in [0, 1] on the canonical grid of one slice:

- ``centre``: a Gaussian (``sigma_centre_mm``) at the in-plane centroid of every vertebral body
  T12..S1 whose slice range contains the slice, its height falling off with the slice's distance
  from the centroid (``sigma_lateral_mm``) so that the profile across slices peaks at the
  body's mid-sagittal plane (vertebral bodies often span the whole slice stack);
- ``T12`` ... ``S1``: a wider Gaussian (``sigma_level_mm``) per level on every slice of its slice
  range - *which* level is here, and where it ends laterally;
- ``AS``, ``PS``, ``PI``, ``AI``: the four mid-sagittal corners (``sigma_corner_mm``) on slices
  within ``corner_slices`` of the level's mid slice.

A level without slice range (e.g. a markup) is drawn on the slice nearest its centroid only; a
level without corners contributes no corner targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LEVEL_NAMES
from ..levels import LevelSet
from .grid import SagittalGrid

CORNER_CHANNELS = ("AS", "PS", "PI", "AI")
CHANNELS = ("centre",) + LEVEL_NAMES + CORNER_CHANNELS
CENTRE, FIRST_LEVEL, FIRST_CORNER = 0, 1, 1 + len(LEVEL_NAMES)


@dataclass
class LevelGeometry:
    """One level on the grid: in-plane centroid, fractional slice, slice range, corners."""

    index: int  # 0..6 (T12..S1)
    row: float
    col: float
    k: float
    slice_range: tuple[int, int]
    mid_slice: int
    corners: np.ndarray | None  # (4, 2) row, col


def level_geometry(levels: LevelSet, grid: SagittalGrid) -> list[LevelGeometry]:
    out = []
    for lv in levels:
        if lv.name not in LEVEL_NAMES:
            continue
        r, c, k = grid.from_lps(lv.centroid)
        mid = lv.mid_slice if lv.mid_slice is not None else int(round(k))
        sr = lv.slice_range if lv.slice_range is not None else (mid, mid)
        corners = None if lv.corners is None else grid.from_lps(lv.corners)[:, :2]
        out.append(LevelGeometry(LEVEL_NAMES.index(lv.name), float(r), float(c), float(k),
                                 (int(sr[0]), int(sr[1])), int(mid), corners))
    return out


def _gauss(shape, row, col, sigma_px, out, amp: float = 1.0):
    H, W = shape
    rad = int(np.ceil(3 * sigma_px))
    r0, r1 = max(0, int(np.floor(row)) - rad), min(H, int(np.ceil(row)) + rad + 1)
    c0, c1 = max(0, int(np.floor(col)) - rad), min(W, int(np.ceil(col)) + rad + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rr = np.arange(r0, r1)[:, None]
    cc = np.arange(c0, c1)[None, :]
    g = amp * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma_px**2))
    np.maximum(out[r0:r1, c0:c1], g, out=out[r0:r1, c0:c1])


def slice_targets(geom: list[LevelGeometry], k: int, shape: tuple[int, int], spacing_mm: float,
                  sigma_centre_mm: float, sigma_level_mm: float, sigma_corner_mm: float,
                  corner_slices: int = 1, slice_mm: float = 4.0, sigma_lateral_mm: float = 8.0) -> np.ndarray:
    """Targets of slice ``k``: (len(CHANNELS), H, W) float32."""
    t = np.zeros((len(CHANNELS),) + tuple(shape), dtype=np.float32)
    for g in geom:
        if not g.slice_range[0] <= k <= g.slice_range[1]:
            continue
        amp = float(np.exp(-(((k - g.k) * slice_mm) ** 2) / (2 * sigma_lateral_mm**2)))
        _gauss(shape, g.row, g.col, sigma_centre_mm / spacing_mm, t[CENTRE], amp)
        _gauss(shape, g.row, g.col, sigma_level_mm / spacing_mm, t[FIRST_LEVEL + g.index])
        if g.corners is not None and abs(k - g.mid_slice) <= corner_slices:
            for c in range(4):
                _gauss(shape, g.corners[c, 0], g.corners[c, 1], sigma_corner_mm / spacing_mm,
                       t[FIRST_CORNER + c])
    return t
