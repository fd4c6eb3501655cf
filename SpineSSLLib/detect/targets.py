"""Training targets of the detector from a ``LevelSet`` (any level source).

Output channels (``CHANNELS``) on the canonical grid of one slice:

- ``background``, ``T12`` ... ``S1``: a class map (softmax group).  A level's region is the
  quadrilateral of its four mid-sagittal corners, drawn on every slice of its slice range
  (a disc of ``region_radius_mm`` around the centroid when the source has no corners).
  Regions separated by discs make vertebra instances; their class says which level.
- ``centre``: a Gaussian (``sigma_centre_mm``) at the in-plane centroid, its height falling
  off with the slice's distance from the centroid (``sigma_lateral_mm``) so that its profile
  across slices peaks at the body's mid-sagittal plane (bodies often span the whole stack).

A level without slice range (e.g. a markup) is drawn on the slice nearest its centroid only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LEVEL_NAMES
from ..levels import LevelSet
from .grid import SagittalGrid

CHANNELS = ("background",) + LEVEL_NAMES + ("centre",)
BACKGROUND, FIRST_LEVEL, CENTRE = 0, 1, 1 + len(LEVEL_NAMES)
N_CLASSES = 1 + len(LEVEL_NAMES)


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


def _polygon(shape, pts: np.ndarray, out: np.ndarray) -> None:
    from matplotlib.path import Path as MplPath

    H, W = shape
    r0, r1 = max(0, int(np.floor(pts[:, 0].min()))), min(H, int(np.ceil(pts[:, 0].max())) + 1)
    c0, c1 = max(0, int(np.floor(pts[:, 1].min()))), min(W, int(np.ceil(pts[:, 1].max())) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    inside = MplPath(pts).contains_points(np.column_stack([rr.ravel(), cc.ravel()])).reshape(rr.shape)
    out[r0:r1, c0:c1] |= inside


def region_mask(g: LevelGeometry, shape, spacing_mm: float, region_radius_mm: float = 10.0) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    if g.corners is not None:
        _polygon(shape, g.corners, m)
    else:
        rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
        m |= (rr - g.row) ** 2 + (cc - g.col) ** 2 <= (region_radius_mm / spacing_mm) ** 2
    return m


def slice_targets(geom: list[LevelGeometry], k: int, shape: tuple[int, int], spacing_mm: float,
                  sigma_centre_mm: float = 5.0, slice_mm: float = 4.0, sigma_lateral_mm: float = 8.0,
                  region_radius_mm: float = 10.0) -> np.ndarray:
    """Targets of slice ``k``: (len(CHANNELS), H, W) float32 (one-hot classes + centre map)."""
    t = np.zeros((len(CHANNELS),) + tuple(shape), dtype=np.float32)
    cls = np.zeros(shape, dtype=np.int64)
    for g in geom:
        if not g.slice_range[0] <= k <= g.slice_range[1]:
            continue
        cls[region_mask(g, shape, spacing_mm, region_radius_mm)] = FIRST_LEVEL + g.index
        amp = float(np.exp(-(((k - g.k) * slice_mm) ** 2) / (2 * sigma_lateral_mm**2)))
        _gauss(shape, g.row, g.col, sigma_centre_mm / spacing_mm, t[CENTRE], amp)
    for c in range(N_CLASSES):
        t[c] = cls == c
    return t
