"""Running a detector on a scan: heatmaps on every sagittal slice -> a ``LevelSet``.

1. the scan is resampled onto the canonical grid (``grid``) and every slice ``k`` is predicted
   from slices ``k-context .. k+context``;
2. the mid-sagittal slice of the spine is the slice with the most centre-map mass; centre and
   level maps averaged over it and its neighbours go to ``assign.assign_levels`` (one chain for
   the whole scan, so one instance per level, consistent across slices);
3. per level, its level map sampled at its in-plane position across slices gives the slice
   range (where it exceeds 0.5) and the centre map, whose height falls off away from the
   body's mid-sagittal plane, gives the lateral centroid (sub-slice peak of that profile); the corners are the corner-map maxima in their quadrant around the centroid
   (quadrants follow the local spine axis) on the level's mid slice and its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LEVEL_NAMES
from ..io import Scan
from ..levels import Level, LevelSet
from .assign import Assignment, assign_levels
from .grid import SagittalGrid, make_grid, resample
from .model import Detector
from .targets import CENTRE, FIRST_CORNER, FIRST_LEVEL


@dataclass
class Prediction:
    grid: SagittalGrid
    image: np.ndarray  # (K, H, W) resampled input
    maps: np.ndarray  # (K, C, H, W) sigmoid outputs
    mid_slice: int
    assignment: Assignment
    levels: LevelSet


def stack_input(image: np.ndarray, k: int, context: int) -> np.ndarray:
    K = image.shape[0]
    idx = np.clip(np.arange(k - context, k + context + 1), 0, K - 1)
    return image[idx]


def predict_maps(detector: Detector, image: np.ndarray, batch_size: int = 8) -> np.ndarray:
    import torch

    net = detector.network
    device = next(net.parameters()).device
    ctx = detector.config.context
    outs = []
    with torch.inference_mode():
        for k0 in range(0, image.shape[0], batch_size):
            ks = range(k0, min(image.shape[0], k0 + batch_size))
            x = torch.from_numpy(np.stack([stack_input(image, k, ctx) for k in ks])).to(device)
            amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                   else torch.autocast("cpu", enabled=False))
            with amp:
                y = torch.sigmoid(net(x).float())
            outs.append(y.cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


def _profile(centre: np.ndarray, row: float, col: float) -> np.ndarray:
    K, H, W = centre.shape
    r, c = int(round(row)), int(round(col))
    r0, r1, c0, c1 = max(0, r - 1), min(H, r + 2), max(0, c - 1), min(W, c + 2)
    return centre[:, r0:r1, c0:c1].reshape(K, -1).max(axis=1)


def _slice_range(p: np.ndarray) -> tuple[int, int]:
    """Contiguous slices around the profile's maximum where it exceeds 0.5 (or half its max)."""
    K = len(p)
    k_max = int(np.argmax(p))
    thr = min(0.5, 0.5 * float(p[k_max]))
    lo = hi = k_max
    while lo > 0 and p[lo - 1] >= thr:
        lo -= 1
    while hi < K - 1 and p[hi + 1] >= thr:
        hi += 1
    return lo, hi


def _peak_slice(p: np.ndarray, lo: int, hi: int) -> float:
    """Fractional slice of the profile's peak within [lo, hi] (log-parabola through the maximum
    and its neighbours, i.e. exact for a Gaussian fall-off)."""
    k = lo + int(np.argmax(p[lo:hi + 1]))
    if 0 < k < len(p) - 1:
        lm, l0, lp = (np.log(max(float(v), 1e-6)) for v in (p[k - 1], p[k], p[k + 1]))
        den = lm - 2 * l0 + lp
        if den < -1e-9:
            return k + float(np.clip(0.5 * (lm - lp) / den, -1.0, 1.0))
    return float(k)


def _axes(name: str, pos: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Local superior and anterior unit vectors (row, col) at a level from its neighbours."""
    v = LEVEL_NAMES.index(name)
    up = LEVEL_NAMES[v - 1] if v > 0 else None
    down = LEVEL_NAMES[v + 1] if v + 1 < len(LEVEL_NAMES) else None
    a = pos.get(up, pos[name]) if up else pos[name]
    b = pos.get(down, pos[name]) if down else pos[name]
    sup = a - b
    if np.linalg.norm(sup) < 1e-6:
        sup = np.array([-1.0, 0.0])
    sup = sup / np.linalg.norm(sup)
    ant = np.array([sup[1], -sup[0]])
    if ant[1] > 0:  # anterior = towards smaller column
        ant = -ant
    return sup, ant


def _corners(cmaps: np.ndarray, centre_rc: np.ndarray, sup: np.ndarray, ant: np.ndarray,
             radius_px: float) -> tuple[np.ndarray, float]:
    """Corner positions (4, 2) and the weakest corner peak value."""
    _, H, W = cmaps.shape
    rr, cc = np.mgrid[0:H, 0:W]
    d = np.stack([rr - centre_rc[0], cc - centre_rc[1]], axis=-1).astype(np.float64)
    ds, da = d @ sup, d @ ant
    near = (ds**2 + da**2) <= radius_px**2
    quadrants = [(ds > 0) & (da > 0), (ds > 0) & (da < 0), (ds < 0) & (da < 0), (ds < 0) & (da > 0)]
    out = np.zeros((4, 2))
    weakest = 1.0
    for c, q in enumerate(quadrants):
        m = np.where(near & q, cmaps[c], -1.0)
        r, cl = np.unravel_index(int(np.argmax(m)), m.shape)
        val = float(m[r, cl])
        weakest = min(weakest, max(val, 0.0))
        # sub-pixel: weighted mean of the 3x3 neighbourhood
        r0, r1, c0, c1 = max(0, r - 1), min(H, r + 2), max(0, cl - 1), min(W, cl + 2)
        w = np.clip(cmaps[c, r0:r1, c0:c1], 0, None)
        if w.sum() > 0:
            gr, gc = np.mgrid[r0:r1, c0:c1]
            out[c] = [(w * gr).sum() / w.sum(), (w * gc).sum() / w.sum()]
        else:
            out[c] = [r, cl]
    return out, weakest


def detect_scan(detector: Detector, scan: Scan, path=None, source: str | None = None) -> Prediction:
    """Detect and label T12..S1 in ``scan``; low-confidence levels are kept and flagged in
    ``levels.issues`` (confidence < ``assign.low_confidence``)."""
    cfg = detector.config
    grid = make_grid(scan, cfg.spacing_mm, cfg.multiple, path)
    image = resample(scan, grid, path)
    maps = predict_maps(detector, image)
    centre = maps[:, CENTRE]
    K = centre.shape[0]
    mass = np.array([np.sort(centre[k].ravel())[-200:].sum() for k in range(K)])
    mid = int(np.argmax(np.convolve(mass, [1, 1, 1], mode="same")))
    band = slice(max(0, mid - 1), min(K, mid + 2))
    agg = maps[band].mean(axis=0)
    res = assign_levels(agg[CENTRE], agg[FIRST_LEVEL:FIRST_LEVEL + len(LEVEL_NAMES)], cfg.spacing_mm, cfg.assign)
    pos = {n: np.array([a.row, a.col]) for n, a in res.levels.items()}
    spacing_px = (res.spacing_mm or 30.0) / cfg.spacing_mm
    levels: dict[str, Level] = {}
    issues = list(res.issues)
    for name, a in res.levels.items():
        v = LEVEL_NAMES.index(name)
        lo, hi = _slice_range(_profile(maps[:, FIRST_LEVEL + v], a.row, a.col))
        kf = _peak_slice(_profile(centre, a.row, a.col), lo, hi)
        mid_k = int(np.clip(np.floor(kf + 0.5), lo, hi))
        cb = slice(max(0, mid_k - cfg.corner_slices), min(K, mid_k + cfg.corner_slices + 1))
        cmaps = maps[cb, FIRST_CORNER:FIRST_CORNER + 4].mean(axis=0)
        sup, ant = _axes(name, pos)
        crc, weakest = _corners(cmaps, pos[name], sup, ant, 0.9 * spacing_px)
        conf = a.confidence
        if weakest < 0.2:
            issues.append(f"{name}: corners uncertain (weakest corner peak {weakest:.2f})")
            conf = min(conf, 0.5 * (1 + weakest))
        centroid = grid.to_lps([a.row, a.col, kf])
        corners = grid.to_lps(np.column_stack([crc, np.full(4, float(mid_k))]))
        levels[name] = Level(name, centroid, corners, (lo, hi), mid_k, float(np.clip(conf, 0.0, 1.0)))
    src = source or f"detect:{detector.meta.get('config', {}).get('name') or detector.path.name}"
    ls = LevelSet(levels, issues, src)
    return Prediction(grid, image, maps, mid, res, ls)


_LOADED: dict = {}


def usable_levels(levels: LevelSet, min_confidence: float = 0.5) -> LevelSet:
    """The levels a downstream stage may use: low-confidence levels are removed and named in
    ``issues`` (flagged, never silently used)."""
    keep, issues = {}, list(levels.issues)
    for lv in levels:
        if lv.confidence >= min_confidence:
            keep[lv.name] = lv
        else:
            issues.append(f"{lv.name}: detection confidence {lv.confidence:.2f} < {min_confidence:g}; not used")
    return LevelSet(keep, issues, levels.source)


def detect_levels(scan: Scan, model=None, device: str = "auto", min_confidence: float | None = None,
                  where=None) -> LevelSet:
    """One-call automatic levels for a scan (the level source ``detect`` of ``spine-ssl extract``
    and the Slicer module's automatic option).  ``model``: a model folder (default: the bundled
    model), loaded once per process.  With ``min_confidence`` low-confidence levels are dropped
    (see ``usable_levels``); without it they are kept and flagged in ``issues``."""
    from ..train import select_device
    from .model import load_detector

    dev = str(select_device(device))
    key = (str(model) if model else "", dev)
    if key not in _LOADED:
        _LOADED[key] = load_detector(model or None, device=dev)
    levels = detect_scan(_LOADED[key], scan, where).levels
    return usable_levels(levels, min_confidence) if min_confidence is not None else levels
