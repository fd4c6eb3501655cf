"""Training targets of the detector from a ``LevelSet`` (any level source).

Output channels (``CHANNELS``) on the canonical grid of one slice:

- ``background``, ``above`` (a vertebral body above T12: T11, T10, ...), ``T12`` ... ``S1``,
  ``sacrum`` (the sacral segments below S1 and the coccyx): a class map (softmax group).
  Regions separated by discs make vertebra instances; their class says which level.  The
  ``S1`` class (the segment under the L5-S1 disc, above the rest of the sacrum) is the anchor
  that the level assignment counts from; the level classes only break ties.
- ``centre``: a Gaussian (``sigma_centre_mm``) at the in-plane centroid of every vertebral body
  (T12..S1 and those above), its height falling off with the slice's distance from the centroid
  (``sigma_lateral_mm``) so that its profile across slices peaks at the body's mid-sagittal
  plane (bodies often span the whole stack).

Training targets have one more channel, ``known``: the pixels whose centre-map value is known
- everywhere for the randomised training scans (``randomised``), and for a ``LevelSet`` source
(levels T12..S1 only) the band between the top of its highest level and the bottom of its lowest
one, since vertebrae above T12 are not in the level file.  Outside that band the class target is
a set (``slice_targets``): above it background, "above" or a higher level, below it background,
sacrum or a lower level - so the network is told that a sacral segment below S1 is not S1.
From a ``LevelSet``, a level's region is the quadrilateral of its four mid-sagittal corners,
drawn on every slice of its slice range (a disc of ``region_radius_mm`` around the centroid when
the source has no corners); a level without slice range (e.g. a markup) is drawn on the slice
nearest its centroid only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LEVEL_NAMES
from ..levels import LevelSet
from .grid import SagittalGrid

CHANNELS = ("background", "above") + LEVEL_NAMES + ("sacrum", "centre")
BACKGROUND, ABOVE, FIRST_LEVEL = 0, 1, 2
S1_CLASS = FIRST_LEVEL + len(LEVEL_NAMES) - 1
SACRUM = FIRST_LEVEL + len(LEVEL_NAMES)
N_CLASSES = SACRUM + 1
CENTRE = N_CLASSES
KNOWN = CENTRE + 1  # training targets only
N_TARGETS = KNOWN + 1


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


def _band(geom: list[LevelGeometry], shape: tuple[int, int]):
    """(projection of every pixel on the spine axis through the highest and lowest level's
    centroids, superior edge of the highest level, inferior edge of the lowest level)."""
    g = sorted(geom, key=lambda x: x.index)
    top, bottom = g[0], g[-1]
    axis = np.array([bottom.row - top.row, bottom.col - top.col])
    axis = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 1e-6 else np.array([1.0, 0.0])

    def extent(x, sign):  # extreme projection of a level's corners (or its centre +- 10 px)
        pts = x.corners if x.corners is not None else np.array([[x.row, x.col]]) + sign * 10 * axis
        return (pts @ axis).min() if sign < 0 else (pts @ axis).max()

    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    return rr * axis[0] + cc * axis[1], extent(top, -1) - 1.0, extent(bottom, 1) + 1.0


def slice_targets(geom: list[LevelGeometry], k: int, shape: tuple[int, int], spacing_mm: float,
                  sigma_centre_mm: float = 5.0, slice_mm: float = 4.0, sigma_lateral_mm: float = 8.0,
                  region_radius_mm: float = 10.0) -> np.ndarray:
    """Targets of slice ``k`` from level geometry: (N_TARGETS, H, W) float32 (class indicators,
    centre map, known mask).  A level file names T12..S1 only, so beyond its highest level a
    pixel may be background, a body above T12 or a level above the highest one; beyond its lowest
    level, background, sacrum or a lower level: there the class indicators mark the allowed set
    (several 1s; the loss is -log of their total probability) and the centre map is not known."""
    t = np.zeros((N_TARGETS,) + tuple(shape), dtype=np.float32)
    cls = np.zeros(shape, dtype=np.int64)
    for g in geom:
        if not g.slice_range[0] <= k <= g.slice_range[1]:
            continue
        cls[region_mask(g, shape, spacing_mm, region_radius_mm)] = FIRST_LEVEL + g.index
        amp = float(np.exp(-(((k - g.k) * slice_mm) ** 2) / (2 * sigma_lateral_mm**2)))
        _gauss(shape, g.row, g.col, sigma_centre_mm / spacing_mm, t[CENTRE], amp)
    for c in range(N_CLASSES):
        t[c] = cls == c
    t[KNOWN] = 1.0
    if geom:
        p, top, bottom = _band(geom, shape)
        v_top, v_bot = min(g.index for g in geom), max(g.index for g in geom)
        above, below = (p < top) & (cls == BACKGROUND), (p > bottom) & (cls == BACKGROUND)
        t[ABOVE][above] = 1.0
        for v in range(v_top):
            t[FIRST_LEVEL + v][above] = 1.0
        t[SACRUM][below] = 1.0
        for v in range(v_bot + 1, len(LEVEL_NAMES)):
            t[FIRST_LEVEL + v][below] = 1.0
        t[KNOWN][above | below] = 0.0  # for the centre map: bodies there are not in the level file
    return t


def class_targets(classes: np.ndarray, centres, k: int, spacing_mm: float, sigma_centre_mm: float,
                  slice_mm: float, sigma_lateral_mm: float) -> np.ndarray:
    """Targets of slice ``k`` from a class map (H, W) (``CHANNELS`` indices) and body centres
    [(row, col, k_exact)]: (N_TARGETS, H, W) float32, every pixel known."""
    shape = classes.shape
    t = np.zeros((N_TARGETS,) + tuple(shape), dtype=np.float32)
    for c in range(N_CLASSES):
        t[c] = classes == c
    for row, col, kc in centres:
        amp = float(np.exp(-(((k - kc) * slice_mm) ** 2) / (2 * sigma_lateral_mm**2)))
        if amp > 1e-3:
            _gauss(shape, row, col, sigma_centre_mm / spacing_mm, t[CENTRE], amp)
    t[KNOWN] = 1.0
    return t
