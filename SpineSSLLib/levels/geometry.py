"""Geometry on levels: corner order, spine axis, corners estimated from centres, levels inside a
scan, and the levels as extraction uses them (``prepared_levels``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import LEVEL_NAMES
from .core import LevelSet

_SUPERIOR = np.array([0.0, 0.0, 1.0])  # LPS +z
_POSTERIOR = np.array([0.0, 1.0, 0.0])  # LPS +y

# When only a centre point is known, corners are estimated from the distance between
# neighbouring centres (lumbar VB: width ~1.05x, height ~0.72x the centre-to-centre distance).
EST_WIDTH_FACTOR = 1.05
EST_HEIGHT_FACTOR = 0.72


def order_corners(points) -> np.ndarray:
    """Put 4 outline points (LPS) in CORNER_NAMES order: the two most superior points are the
    superior corners, and of each pair the more anterior (smaller y) comes first/last."""
    p = np.asarray(points, dtype=np.float64).reshape(4, 3)
    by_sup = np.argsort(-(p @ _SUPERIOR), kind="stable")
    sup, inf = p[by_sup[:2]], p[by_sup[2:]]
    sup = sup[np.argsort(sup @ _POSTERIOR, kind="stable")]  # anterior first
    inf = inf[np.argsort(inf @ _POSTERIOR, kind="stable")]
    return np.stack([sup[0], sup[1], inf[1], inf[0]])


def spine_axis(levels: "LevelSet", name: str) -> np.ndarray | None:
    """Unit superior->inferior direction at level ``name`` from its neighbours' centroids."""
    names = [n for n in LEVEL_NAMES if n in levels]
    if name not in names or len(names) < 2:
        return None
    i = names.index(name)
    above = levels[names[i - 1]].centroid if i > 0 else levels[name].centroid
    below = levels[names[i + 1]].centroid if i + 1 < len(names) else levels[name].centroid
    d = below - above
    n = np.linalg.norm(d)
    return None if n < 1e-6 else d / n


def _inplane_frame(v_inf: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u anterior->posterior, v superior->inferior), both unit and in the slice plane."""
    n = normal / np.linalg.norm(normal)
    v = v_inf - (v_inf @ n) * n
    v /= np.linalg.norm(v)
    u = np.cross(n, v)
    if u @ _POSTERIOR < 0:
        u = -u
    return u, v


def estimate_corners(levels: "LevelSet", normal) -> "LevelSet":
    """Fill missing corners of centre-only levels from neighbouring centres (flagged)."""
    names = [n for n in LEVEL_NAMES if n in levels]
    out = {}
    issues = list(levels.issues)
    for name, lev in levels.levels.items():
        if lev.corners is not None or name not in names:
            out[name] = lev
            continue
        i = names.index(name)
        nb = [levels[names[j]].centroid for j in (i - 1, i + 1) if 0 <= j < len(names)]
        if not nb:
            issues.append(f"{name}: only a centre point and no neighbour to estimate its size; skipped")
            continue
        dist = float(np.mean([np.linalg.norm(c - lev.centroid) for c in nb]))
        axis = spine_axis(levels, name)
        u, v = _inplane_frame(axis, np.asarray(normal, dtype=np.float64))
        w, h = EST_WIDTH_FACTOR * dist / 2, EST_HEIGHT_FACTOR * dist / 2
        c = lev.centroid
        corners = np.stack([c - w * u - h * v, c + w * u - h * v, c + w * u + h * v, c - w * u + h * v])
        out[name] = dataclasses.replace(lev, corners=corners)
        issues.append(f"{name}: corners estimated from the centre points")
    return LevelSet(out, issues, levels.source)


def check_in_volume(levels: "LevelSet", scan, margin_vox: float = 0.5) -> "LevelSet":
    """Drop (and flag) levels whose centroid or corners fall outside the scan."""
    K, J, I = scan.shape
    hi = np.array([I - 1, J - 1, K - 1], dtype=np.float64) + margin_vox
    out, issues = {}, list(levels.issues)
    for name, lev in levels.levels.items():
        pts = lev.centroid[None] if lev.corners is None else np.vstack([lev.centroid[None], lev.corners])
        ijk = scan.lps_to_index(pts)
        if np.any(ijk < -margin_vox) or np.any(ijk > hi):
            issues.append(f"{name}: outside the image volume")
            continue
        out[name] = lev
    zs = [out[n].centroid[2] for n in LEVEL_NAMES if n in out]
    if any(b >= a for a, b in zip(zs, zs[1:])):
        issues.append("level order: centroids are not superior-to-inferior in T12..S1 order")
    return LevelSet(out, issues, levels.source)


def prepared_levels(scan, levels: LevelSet) -> LevelSet:
    """The levels as ``extract.extract_scan`` uses them: inside the volume, corners estimated
    from neighbouring centres where only centres were given."""
    normal = scan.affine[:3, 2] / np.linalg.norm(scan.affine[:3, 2])
    return estimate_corners(check_in_volume(levels, scan), normal)
